#!/usr/bin/env bash
# Builds the Python-authored model as a component: componentize-py (from PyPI) bundles CPython
# and app.py against sluice's WIT world. Needs python3; installs componentize-py into a
# virtualenv ($VENV, default ~/.cache/sluice-python-venv).
#
#   sample-models/python-logreg/build.sh [OUT.wasm]     # default: target/python_logreg.wasm
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-$HOME/.cache/sluice-python-venv}
OUT=${1:-${CARGO_TARGET_DIR:-target}/python_logreg.wasm}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "componentize-py==0.25.1"
mkdir -p "$(dirname "$OUT")"
"$VENV/bin/componentize-py" -d wit -w model componentize \
    -p sample-models/python-logreg app -o "$OUT"
echo "built $OUT"
