#!/usr/bin/env bash
# Creates .venv at the repository root and installs this project with every dependency pinned.
#
#   bash scripts/setup.sh                        # CPU torch unless an NVIDIA driver is found
#   CENTERCLIP_TORCH=cuda bash scripts/setup.sh  # force the CUDA build of torch (from PyPI)
#   CENTERCLIP_TORCH=cpu  bash scripts/setup.sh  # force the CPU build
#
# Safe to re-run: an existing .venv is reused and only what is missing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
variant=${CENTERCLIP_TORCH:-auto}
if [ "$variant" = auto ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        variant=cuda
    else
        variant=cpu
    fi
fi
case "$variant" in
    cpu|cuda) ;;
    *) echo "CENTERCLIP_TORCH must be cpu, cuda or auto, not '$variant'" >&2; exit 2 ;;
esac

[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "uv==0.13.9"

uv_args=(--python .venv/bin/python --constraint requirements/constraints.txt
         --constraint "requirements/torch-$variant.txt")
# uv does not read pip's configuration: forward a local wheel folder (where a CPU torch may lie).
# Not for the CUDA build: a local torch-2.13.0+cpu satisfies torch==2.13.0 and would be taken.
find_links=$(.venv/bin/python -m pip config get global.find-links 2>/dev/null || true)
if [ "$variant" = cpu ]; then
    for folder in $find_links; do
        uv_args+=(--find-links "$folder")
    done
fi
if [ "$variant" = cpu ] && ! ls $find_links 2>/dev/null | grep -q '^torch-.*+cpu'; then
    uv_args+=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
fi

.venv/bin/uv pip install --quiet "${uv_args[@]}" -r "requirements/torch-$variant.txt"
.venv/bin/uv pip install --quiet "${uv_args[@]}" -e ".[dev]"
# Python caches compiled modules only where PYTHONDONTWRITEBYTECODE is unset (it is set on some
# machines, CI's among them), and uv does not compile at install. Without this, every process, each
# Ray worker among them, compiles torch and open_clip from source again: an index job's start-up
# measured 24 s here without it and 7 s with it. compileall exits 1 over the few Python 3.12-only
# files torch ships for its own tests, which are never imported: not a failure of the set-up.
.venv/bin/python -m compileall -q -j 0 .venv/lib/python*/site-packages >/dev/null || true
echo "set-up done: .venv ($variant torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
