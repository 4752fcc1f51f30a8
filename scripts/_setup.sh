# Shared by scripts/serve and scripts/test: create .venv and install what the project needs.
# torch is installed first and pinned to the CPU build (2.13.0) unless one is already there, so the
# project's own "torch>=2.5" range is satisfied without pulling a CUDA build.
TORCH_VERSION="${NPU_SERVE_TORCH_VERSION:-2.13.0}"

setup_venv() {
    local extras="${1:-}"
    local py="${PYTHON:-python3}"
    if [ ! -x .venv/bin/python ]; then
        echo "creating .venv"
        "$py" -m venv .venv
    fi
    local stamp=".venv/.npu-serve-installed-${extras:-base}"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        .venv/bin/python -m pip install -q --upgrade pip
        if ! .venv/bin/python -c "import torch" 2>/dev/null; then
            .venv/bin/python -m pip install -q "torch==${TORCH_VERSION}"
        fi
        if [ -n "$extras" ]; then
            .venv/bin/python -m pip install -q -e ".[${extras}]"
        else
            .venv/bin/python -m pip install -q -e .
        fi
        touch "$stamp"
    fi
}
