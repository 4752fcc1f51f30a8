#!/usr/bin/env bash
# The images' command (CMD; the CANN base image's ENTRYPOINT sources the toolkit and NNAL, then execs
# this). Serves the model mounted where ModelArts mounts it, on 0.0.0.0:8080, logging to stdout.
# Every setting can be changed with an environment variable, and extra `npu-serve serve` flags are
# passed through:
#   MODEL_DIR (/home/mind/model)  HOST (0.0.0.0)  PORT (8080)  NPU_SERVE_DEVICE (auto)
#   SERVED_MODEL_NAME (the model directory's name)
#   GRACEFUL_SHUTDOWN_TIMEOUT (60: on SIGTERM running requests get this many seconds to finish,
#   as ModelArts asks; keep it below the platform's kill deadline, 90 s there)
set -euo pipefail
args=(serve --model "${MODEL_DIR:-/home/mind/model}" --host "${HOST:-0.0.0.0}" --port "${PORT:-8080}"
      --device "${NPU_SERVE_DEVICE:-auto}" --graceful-shutdown-timeout "${GRACEFUL_SHUTDOWN_TIMEOUT:-60}")
if [ -n "${SERVED_MODEL_NAME:-}" ]; then
    args+=(--served-model-name "$SERVED_MODEL_NAME")
fi
exec npu-serve "${args[@]}" "$@"
