#!/usr/bin/env bash
# The documentation site: build it with --strict (a broken link or a renamed function is an
# error), then serve it with live reload on http://127.0.0.1:8000 (this machine only).
#   bash scripts/docs.sh          serve (Ctrl-C stops it)
#   bash scripts/docs.sh build    build into build/site/ and stop
# Installs the docs tools (pyproject's `docs` extra) into .venv when they are missing. Neither
# torch nor camkit itself is needed: griffe reads the docstrings from the source files.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import mkdocs, material, mkdocstrings_handlers.python, mkdocs_jupyter" >/dev/null 2>&1; then
    # the `docs` extra's requirements, read from pyproject.toml (one line, so no TOML parser is needed)
    mapfile -t tools < <(sed -n 's/^docs = \[\(.*\)\].*/\1/p' pyproject.toml | grep -o '"[^"]*"' | tr -d '"')
    [ "${#tools[@]}" -gt 0 ] || { echo "docs.sh: no docs extra in pyproject.toml" >&2; exit 2; }
    .venv/bin/pip install --quiet "${tools[@]}"
fi
export NO_MKDOCS_2_WARNING=1   # mkdocs-material's end-of-life banner on every run
case "${1:-serve}" in
    build) exec .venv/bin/mkdocs build --strict ;;
    serve) exec .venv/bin/mkdocs serve --strict -a 127.0.0.1:8000 ;;
    *) echo "usage: bash scripts/docs.sh [serve|build]" >&2; exit 2 ;;
esac
