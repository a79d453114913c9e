#!/usr/bin/env bash
# One command: set up .venv (if missing) and run the offline demo end to end.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
exec .venv/bin/camkit demo "$@"
