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

# Tools the end-to-end tests drive as a user would, each wanting other pins than the project's:
# guidellm needs an unpinned torch (which would pull a CUDA build) and click/datasets versions
# that clash with .venv. They get their own venv, .venv-tools, with the same CPU torch first.
# tests/e2e/test_guidellm_e2e.py finds .venv-tools/bin/guidellm (or NPU_SERVE_GUIDELLM).
GUIDELLM_SPEC="${NPU_SERVE_GUIDELLM_SPEC:-guidellm==0.8.1}"  # its CLI grammar changes between releases

setup_tools_venv() {
    local py="${PYTHON:-python3}"
    local stamp=".venv-tools/.npu-serve-installed-${GUIDELLM_SPEC//[^A-Za-z0-9.=_-]/_}"
    if [ -f "$stamp" ]; then
        return 0
    fi
    echo "creating .venv-tools (${GUIDELLM_SPEC})"
    if [ ! -x .venv-tools/bin/python ]; then
        "$py" -m venv .venv-tools
    fi
    .venv-tools/bin/python -m pip install -q --upgrade pip
    if ! .venv-tools/bin/python -c "import torch" 2>/dev/null; then
        .venv-tools/bin/python -m pip install -q "torch==${TORCH_VERSION}"
    fi
    .venv-tools/bin/python -m pip install -q "${GUIDELLM_SPEC}"
    touch "$stamp"
}

# Whether a pytest command line (the arguments of ./scripts/test) may run the tool-driven tests:
# yes for the whole suite or anything under tests/e2e, no when every path given is elsewhere.
needs_tools() {
    local arg any_path=0
    for arg in "$@"; do
        case "$arg" in
            -*) ;;
            *)
                if [ -e "${arg%%::*}" ]; then
                    any_path=1
                    case "${arg%%::*}" in
                        tests|tests/|tests/e2e|tests/e2e/*|.|./) return 0 ;;
                    esac
                fi
                ;;
        esac
    done
    [ "$any_path" -eq 0 ]
}

# The playground's browser tests (tests/e2e/test_playground_browser_e2e.py) drive Debian's own
# `chromium` through Playwright's Python client (a [dev] extra; its browser downloads are never
# used: no `playwright install`). Installed with apt only when missing, and only where we may
# (root, or password-less sudo); elsewhere the tests skip with a reason, and under CI=true fail.
# NPU_SERVE_CHROMIUM names another binary.
find_chromium() {
    local c
    for c in "${NPU_SERVE_CHROMIUM:-}" chromium chromium-browser; do
        if [ -n "$c" ] && command -v "$c" >/dev/null 2>&1; then
            command -v "$c"
            return 0
        fi
    done
    return 1
}

setup_chromium() {
    find_chromium >/dev/null && return 0
    local sudo=""
    if [ "$(id -u)" != "0" ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo="sudo"
        else
            echo "chromium is missing and apt-get needs root: the browser tests will say so" >&2
            return 1
        fi
    fi
    command -v apt-get >/dev/null 2>&1 || { echo "chromium is missing and there is no apt-get" >&2; return 1; }
    echo "installing chromium (apt) for the playground's browser tests"
    # Keep-Downloaded-Packages=false: the ~100 MB of .debs go once installed (disk is tight on CI).
    local apt=($sudo env DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o Dpkg::Use-Pty=0
               -o APT::Keep-Downloaded-Packages=false)
    # A fresh image has no package lists; fonts-dejavu-core so screenshots show text, not boxes.
    "${apt[@]}" install --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1 || {
        "${apt[@]}" update >/dev/null &&
        "${apt[@]}" install --no-install-recommends chromium fonts-dejavu-core >/dev/null
    }
    find_chromium >/dev/null
}
