#!/usr/bin/env bash
# Creates .venv beside the repository and installs minorage (idempotent).
#   bash scripts/setup.sh          what the commands need
#   bash scripts/setup.sh --test   also the test tools, and Debian's chromium and chromedriver for the
#                                  browser tests of the HTML report and the review app (installed
#                                  with apt-get when run as root)
# torch is pinned first to the CPU build: an unpinned torch would pull GBs of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
pip install torch==2.13.0
if [ "${1:-}" != "--test" ]; then
    pip install -e ".[train]"
    exit 0
fi
pip install -e ".[test]"
if ! command -v chromium > /dev/null || ! command -v chromedriver > /dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q chromium chromium-driver > /dev/null 2>&1 || { apt-get update -q > /dev/null && apt-get install -y -q chromium chromium-driver > /dev/null; }
    else
        echo "setup: no chromium/chromedriver and no root apt-get: the browser tests (HTML report, review app) will be skipped" >&2
    fi
fi
