#!/bin/sh
# Install ehi-bridge and its locked dependencies (uv.lock) into a virtual environment.
# The container image runs exactly this (Dockerfile), and so does CI
# (tests/integration/ops/test_deploy.py), so the image's install steps are tested on every run.
#
#   deploy/install.sh [SOURCE_DIR]        # PREFIX=/opt/ehi-bridge by default
#
# Needs python3 >= 3.11 with venv. Compiles bytecode so the CLI starts at once even where
# PYTHONDONTWRITEBYTECODE is set or the install folder is read-only.
set -eu
SRC=${1:-.}
PREFIX=${PREFIX:-/opt/ehi-bridge}
PYTHON=${PYTHON:-python3}
UV_VERSION=0.13.9

"$PYTHON" -m venv "$PREFIX"
"$PREFIX/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir "uv==$UV_VERSION"
cd "$SRC"
UV_PROJECT_ENVIRONMENT="$PREFIX" "$PREFIX/bin/uv" sync --quiet --frozen --no-dev \
  --no-editable --compile-bytecode
# The installer itself is not needed at run time.
"$PREFIX/bin/uv" pip uninstall --quiet --python "$PREFIX/bin/python" uv pip 2>/dev/null || true
"$PREFIX/bin/ehi-bridge" --help >/dev/null
echo "installed ehi-bridge into $PREFIX"
