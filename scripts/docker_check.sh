#!/usr/bin/env bash
# Build the CPU image (docker/Dockerfile.cpu) with podman or docker, run it with a model mounted at
# /home/mind/model, and check /health and one chat completion from outside the container. Prints one
# table. Base images cannot be pulled on machines that reach only package registries, so by default the
# base is a Debian rootfs made here with debootstrap (cached); BASE=python:3.11-slim-bookworm uses the
# Dockerfile's own base where a registry is reachable.
#
#   scripts/docker_check.sh              # needs root for debootstrap; podman (or docker) and debootstrap
#   ENGINE=docker BASE=python:3.11-slim-bookworm scripts/docker_check.sh
# Installs podman and debootstrap with apt-get when missing and run as root on Debian.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
CACHE="${NPU_SERVE_CACHE:-$HOME/.cache/npu-serve}/docker-check"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/docker_check.XXXXXX")"
TAG="npu-serve:cpu-check"
NAME="npu-serve-check-$$"
PORT="${PORT:-18080}"
declare -a ROWS=()
row() { ROWS+=("| $1 | $2 | $3 |"); echo "=== $1: $2 ($3)"; }
finish() {
    [ -n "${ENGINE:-}" ] && "$ENGINE" rm -f "$NAME" >/dev/null 2>&1
    echo
    echo "## docker_check ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "| step | result | detail |"
    echo "|------|--------|--------|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "logs: $WORK"
}
trap finish EXIT

need() {  # need TOOL PACKAGE: install with apt-get where possible
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -q >"$WORK/apt.log" 2>&1; apt-get install -y -q "$2" >>"$WORK/apt.log" 2>&1
    fi
    command -v "$1" >/dev/null 2>&1
}

ENGINE="${ENGINE:-}"
if [ -z "$ENGINE" ]; then
    if need podman podman; then ENGINE=podman; elif command -v docker >/dev/null; then ENGINE=docker; fi
fi
if [ -z "$ENGINE" ] || ! "$ENGINE" info >"$WORK/engine.log" 2>&1; then
    row "container engine" FAIL "no working podman or docker (see $WORK/engine.log)"
    exit 1
fi
row "container engine" PASS "$("$ENGINE" --version)"

BASE="${BASE:-}"
if [ -z "$BASE" ]; then
    BASE="localhost/npu-serve-debian:bookworm"
    if ! "$ENGINE" image exists "$BASE" 2>/dev/null && ! "$ENGINE" image inspect "$BASE" >/dev/null 2>&1; then
        ROOTFS="$CACHE/rootfs"
        MIRROR="$(grep -rhoE 'https?://deb\.debian\.org/debian/?' /etc/apt/sources.list /etc/apt/sources.list.d 2>/dev/null | head -n1)"
        MIRROR="${MIRROR:-http://deb.debian.org/debian}"
        if ! need debootstrap debootstrap; then
            row "debian rootfs" FAIL "debootstrap missing and not installable"; exit 1
        fi
        rm -rf "$ROOTFS"; mkdir -p "$ROOTFS"
        start=$SECONDS
        if ! debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,ca-certificates \
                bookworm "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
            row "debian rootfs" FAIL "debootstrap failed (see $WORK/debootstrap.log)"; exit 1
        fi
        tar -C "$ROOTFS" -c . | "$ENGINE" import - "$BASE" >"$WORK/import.log" 2>&1 \
            || { row "debian rootfs" FAIL "import failed (see $WORK/import.log)"; exit 1; }
        row "debian rootfs" PASS "debootstrap bookworm from $MIRROR in $((SECONDS - start)) s"
    else
        row "debian rootfs" PASS "cached image $BASE"
    fi
fi

# Build context: the committed tree plus this machine's CPU torch wheel (the CPU wheel index is not
# reachable from machines limited to package registries).
CTX="$WORK/context"
mkdir -p "$CTX"
git -C "$REPO" archive HEAD | tar -x -C "$CTX"
TORCH_VERSION="${NPU_SERVE_TORCH_VERSION:-2.13.0}"
"$PY" -m pip download -q --no-deps "torch==$TORCH_VERSION" -d "$CTX/docker/wheels" >"$WORK/wheel.log" 2>&1 \
    || row "torch wheel" FAIL "pip download torch==$TORCH_VERSION failed (see $WORK/wheel.log)"
PIP_ARGS="--find-links /opt/npu-serve/docker/wheels"
CERT_ARG=()
# A machine whose HTTPS goes through an inspecting proxy trusts it through pip's cert bundle: hand the
# build the same bundle (it lives in docker/wheels/, which the image deletes after installing).
CERT="${PIP_CERT:-$("$PY" -m pip config get global.cert 2>/dev/null)}"
if [ -n "$CERT" ] && [ -f "$CERT" ]; then
    cp "$CERT" "$CTX/docker/wheels/ca.pem" && CERT_ARG=(--build-arg PIP_CERT=/opt/npu-serve/docker/wheels/ca.pem)
fi
start=$SECONDS
# podman: the docker image format keeps SHELL (pipefail); chroot isolation runs the RUN steps without an
# OCI runtime, which some sandboxes cannot start (no setrlimit, hybrid cgroups).
BUILD_OPTS=()
[ "$ENGINE" = podman ] && BUILD_OPTS=(--format docker --isolation chroot)
if ! "$ENGINE" build "${BUILD_OPTS[@]}" --network host -f "$CTX/docker/Dockerfile.cpu" --build-arg BASE="$BASE" \
        --build-arg TORCH_VERSION="$TORCH_VERSION" --build-arg TORCH_INDEX_URL= \
        --build-arg PIP_EXTRA_ARGS="$PIP_ARGS" "${CERT_ARG[@]}" -t "$TAG" "$CTX" \
        >"$WORK/build.log" 2>&1; then
    row "build Dockerfile.cpu" FAIL "$(tail -n 3 "$WORK/build.log" | tr '\n|' ' /') (see $WORK/build.log)"
    exit 1
fi
row "build Dockerfile.cpu" PASS "$TAG on $BASE in $((SECONDS - start)) s, $("$ENGINE" image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.2f GB", $1/1e9}')"

# A tiny random-weight model with the default model's tokenizer, laid out as /home/mind/model.
MODEL="$WORK/home/mind/model"
if ! "$PY" - "$MODEL" >"$WORK/model.log" 2>&1 <<'PY'
import sys
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from npu_serve.models import default_model_dir

tok = AutoTokenizer.from_pretrained(default_model_dir())
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                  bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True)
torch.manual_seed(0)
LlamaForCausalLM(cfg).save_pretrained(sys.argv[1])
tok.save_pretrained(sys.argv[1])
PY
then
    row "model" FAIL "could not make the tiny model (see $WORK/model.log)"; exit 1
fi
chmod -R a+rX "$WORK/home"

CHROOT=""
if ! "$ENGINE" run -d --name "$NAME" -p "127.0.0.1:$PORT:8080" -e PORT=8080 -v "$MODEL:/home/mind/model:ro" "$TAG" \
        >"$WORK/run.log" 2>&1; then
    # The OCI runtime cannot start containers here (see run.log). Run the image anyway, as close to the
    # runtime as a chroot gets: its filesystem, its Env, User, WorkingDir and Cmd, the model bind-mounted
    # at /home/mind/model; host network, so the port is PORT.
    "$ENGINE" rm -f "$NAME" >/dev/null 2>&1
    # `create` + `mount` give the container's own writable filesystem without starting a runtime.
    "$ENGINE" create --name "$NAME" "$TAG" >>"$WORK/run.log" 2>&1 && CHROOT="$("$ENGINE" mount "$NAME" 2>>"$WORK/run.log")" \
        || { row "run" FAIL "$(tail -n 2 "$WORK/run.log" | tr '\n' ' ')"; exit 1; }
    for d in proc dev sys; do mount --bind "/$d" "$CHROOT/$d"; done
    mkdir -p "$CHROOT/home/mind/model" && mount --bind -o ro "$MODEL" "$CHROOT/home/mind/model"
    mapfile -t IENV < <("$ENGINE" image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$TAG" | grep -v '^$')
    IUSER="$("$ENGINE" image inspect -f '{{.Config.User}}' "$TAG")"
    ICMD="$("$ENGINE" image inspect -f '{{range .Config.Cmd}}{{.}} {{end}}' "$TAG")"
    IDIR="$("$ENGINE" image inspect -f '{{.Config.WorkingDir}}' "$TAG")"
    setsid chroot --userspec="$IUSER" "$CHROOT" /usr/bin/env -i "${IENV[@]}" "PORT=$PORT" /bin/bash -c "cd $IDIR && exec $ICMD" \
        >"$WORK/container.log" 2>&1 &
    CHROOT_PID=$!
    row "run" PASS "OCI runtime unusable here ($(grep -m1 -oE 'setrlimit[^:]*|cgroups in hybrid mode[^:]*' "$WORK/run.log" || echo error)); ran the image's Cmd under chroot as $IUSER with its Env (pid $CHROOT_PID)"
fi
running() {
    if [ -n "$CHROOT" ]; then kill -0 "$CHROOT_PID" 2>/dev/null; else [ "$("$ENGINE" inspect -f '{{.State.Running}}' "$NAME" 2>/dev/null)" = true ]; fi
}
logs() { [ -n "$CHROOT" ] || "$ENGINE" logs "$NAME" >"$WORK/container.log" 2>&1; }
start=$SECONDS
code=000
while [ $((SECONDS - start)) -lt 600 ]; do
    code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health" || true)"
    [ "$code" = 200 ] && break
    running || break
    sleep 2
done
logs
if [ "$code" != 200 ]; then
    row "GET /health" FAIL "last status $code (see $WORK/container.log)"; exit 1
fi
row "GET /health" PASS "200 after $((SECONDS - start)) s"
body="$(curl -s "http://127.0.0.1:$PORT/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model": "model", "max_tokens": 5, "messages": [{"role": "user", "content": "Hello"}]}')"
if echo "$body" | "$PY" -c 'import json,sys; b=json.load(sys.stdin); assert b["usage"]["completion_tokens"] == 5' 2>/dev/null; then
    row "POST /v1/chat/completions" PASS "$(echo "$body" | cut -c1-120 | tr '|' '/')..."
else
    row "POST /v1/chat/completions" FAIL "$(echo "$body" | cut -c1-200 | tr '|' '/')"; exit 1
fi
start=$SECONDS
if [ -n "$CHROOT" ]; then
    kill -TERM -- "-$CHROOT_PID" 2>/dev/null || kill -TERM "$CHROOT_PID"
    wait "$CHROOT_PID" 2>/dev/null
    umount "$CHROOT/home/mind/model" "$CHROOT/proc" "$CHROOT/dev" "$CHROOT/sys" 2>/dev/null
    "$ENGINE" umount "$NAME" >/dev/null 2>&1
else
    "$ENGINE" stop -t 70 "$NAME" >/dev/null 2>&1
fi
logs
if grep -q "Application shutdown complete" "$WORK/container.log"; then
    row "SIGTERM" PASS "drained and stopped in $((SECONDS - start)) s"
else
    row "SIGTERM" FAIL "no graceful shutdown in the log (see $WORK/container.log)"; exit 1
fi
exit 0
