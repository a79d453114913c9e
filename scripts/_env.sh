# Shared set-up for scripts/demo.sh and scripts/test.sh: a project-local .venv with camkit
# installed editable. Idempotent: a second run only re-checks the install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# torch first, pinned to the releases this project is tested with (a CPU-only machine can
# use them too); then camkit and whatever extra the caller asked for.
case "$(uname -m)" in
    aarch64|arm64) TORCH="torch==2.9.1 torchvision==0.24.1" ;;
    *) TORCH="torch==2.14.1 torchvision==0.29.1" ;;
esac
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
    .venv/bin/pip install --quiet $TORCH
fi
.venv/bin/pip install --quiet -e ".${CAMKIT_EXTRA:-}"
