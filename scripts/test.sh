#!/usr/bin/env bash
# One command: set up .venv with the test extra, add the optional offline data and the
# browser when this machine can install them (tests skip cleanly otherwise), run pytest.
set -euo pipefail
CAMKIT_EXTRA="[test]"
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    need=""
    [ -d /usr/share/datasets/fashion-mnist ] || need="$need dataset-fashion-mnist"
    [ -d /usr/share/openclipart/png ] || need="$need openclipart-png"   # real images (public domain)
    command -v chromium >/dev/null 2>&1 || need="$need chromium"
    command -v chromedriver >/dev/null 2>&1 || need="$need chromium-driver"
    if [ -n "$need" ]; then
        echo "test.sh: installing optional test packages:$need" >&2
        (timeout 600 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 900 \
            apt-get install -y -qq $need) >/dev/null 2>&1 \
            || echo "test.sh: could not install$need; the tests that need them will skip" >&2
    fi
fi
exec .venv/bin/python -m pytest "$@"
