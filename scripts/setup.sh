#!/usr/bin/env bash
# Creates .venv beside the repository and installs minorage with its test tools (idempotent).
# torch is pinned first to the CPU build: an unpinned torch would pull GBs of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
pip install torch==2.13.0
pip install --no-deps facenet-pytorch==2.6.0  # only for the MTCNN weight files in its wheel
pip install -e ".[test]"
