#!/usr/bin/env bash
# Set up tera-speech in ./.venv: idempotent, safe to run before every command.
#   - a virtual environment with the package (editable) and its test tools;
#   - torch 2.13.0 (CPU build on machines without CUDA; pinned in pyproject.toml);
#   - espeak-ng, the speech engine of the embedded corpus (apt, when run as root).
# Re-running only reinstalls when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# The embedded corpus speaks with espeak-ng (Debian package, installs in seconds).
if ! command -v espeak-ng >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "[setup] installing espeak-ng (apt)"
        apt-get update -qq >/dev/null && apt-get install -y -qq espeak-ng >/dev/null
    else
        echo "[setup] warning: espeak-ng is missing; install it (apt-get install espeak-ng," \
             "brew install espeak-ng) to generate the embedded corpus" >&2
    fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi

stamp=".venv/.tera-installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "[setup] installing tera-speech and its dependencies (first run: a few minutes)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[dev]"
    rm -f .venv/.tera-installed-*
    touch "$stamp"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import tera, torch; print("tera", tera.__version__, "torch", torch.__version__)')"
