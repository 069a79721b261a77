#!/usr/bin/env bash
# Regenerate deploy/requirements.lock: every package the image installs, pinned with its hashes, for
# CPython 3.11 on x86-64 Linux (the image's platform), wheels only. Inputs: pyproject.toml (dependencies
# and the extras the Dockerfile installs) and deploy/requirements.in. Needs uv (`pip install uv`) and
# access to PyPI. Run it after changing either input; tests/test_deploy.py checks the lock is current.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null; then
    echo "deploy/lock.sh needs uv: pip install uv" >&2
    exit 2
fi
uv pip compile pyproject.toml deploy/requirements.in \
    --extra cloud --extra cog \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --only-binary :all: --generate-hashes \
    --custom-compile-command "deploy/lock.sh" \
    --output-file deploy/requirements.lock
