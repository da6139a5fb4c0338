#!/usr/bin/env bash
# Starts Seldon MLServer serving the digits scikit-learn model (train.py) over gRPC/HTTP on
# loopback, for comparing with sluice. Prints the server's PID on stdout once the model answers
# ModelReady over gRPC; everything else goes to stderr and $SCRATCH/mlserver.log.
#
#   benches/compare/mlserver/serve.sh VENV SCRATCH        # start; prints PID
#   benches/compare/mlserver/serve.sh stop SCRATCH        # SIGTERM, then SIGKILL the group
#
# VENV: a virtualenv with requirements.txt installed (e.g. ~/.cache/sluice-ci/mlserver-venv).
# SCRATCH: a folder outside the repo; gets mlserver-repo/{settings.json,digits-sklearn/...},
# mlserver.log and mlserver.pid. Knobs (environment; deliberately not MLSERVER_*, which MLServer
# itself reads as settings):
#   MLS_WORKERS=1         settings.json parallel_workers: inference processes (0 = in the
#                         server's own process, no pool)
#   MLS_BATCH_SIZE=0      model-settings.json max_batch_size (0 or 1 = adaptive batching off)
#   MLS_BATCH_TIME=0.005  model-settings.json max_batch_time, seconds (used when batching is on)
#   MLS_HTTP_PORT=18080 MLS_GRPC_PORT=18081   metrics server: disabled (metrics_endpoint null)
#   MLS_READY_TIMEOUT=90  seconds to wait for the model to be ready
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

if [[ ${1:-} == stop ]]; then
    SCRATCH=${2:?usage: serve.sh stop SCRATCH}
    [[ -f $SCRATCH/mlserver.pid ]] || exit 0
    pid=$(cat "$SCRATCH/mlserver.pid")
    if kill -TERM "$pid" 2>/dev/null; then
        for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        # The server was started with setsid: its group holds the inference workers too.
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$SCRATCH/mlserver.pid"
    exit 0
fi

VENV=${1:?usage: serve.sh VENV SCRATCH}
SCRATCH=${2:?usage: serve.sh VENV SCRATCH}
WORKERS=${MLS_WORKERS:-1}
BATCH_SIZE=${MLS_BATCH_SIZE:-0}
BATCH_TIME=${MLS_BATCH_TIME:-0.005}
HTTP_PORT=${MLS_HTTP_PORT:-18080}
GRPC_PORT=${MLS_GRPC_PORT:-18081}
READY_TIMEOUT=${MLS_READY_TIMEOUT:-90}
PY=$VENV/bin/python
[[ -x $PY && -x $VENV/bin/mlserver ]] || { echo "serve.sh: no mlserver in $VENV" >&2; exit 1; }
[[ $BATCH_SIZE -gt 1 ]] || BATCH_TIME=0

mkdir -p "$SCRATCH"
SCRATCH=$(cd "$SCRATCH" && pwd)
REPO=$SCRATCH/mlserver-repo
LOG=$SCRATCH/mlserver.log
if [[ -f $SCRATCH/mlserver.pid ]] && kill -0 "$(cat "$SCRATCH/mlserver.pid")" 2>/dev/null; then
    echo "serve.sh: MLServer already running (PID $(cat "$SCRATCH/mlserver.pid"))" >&2
    exit 1
fi
# Fail fast if the ports are taken (a leftover server would answer the readiness check).
for port in "$HTTP_PORT" "$GRPC_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "serve.sh: 127.0.0.1:$port is already in use" >&2
        exit 1
    fi
done

# Trains only when model.joblib is missing; always rewrites model-settings.json (batching).
"$PY" "$HERE/train.py" "$REPO/digits-sklearn" \
    --max-batch-size "$BATCH_SIZE" --max-batch-time "$BATCH_TIME" >&2
cat > "$REPO/settings.json" <<JSON
{
  "debug": false,
  "host": "127.0.0.1",
  "http_port": $HTTP_PORT,
  "grpc_port": $GRPC_PORT,
  "metrics_endpoint": null,
  "parallel_workers": $WORKERS,
  "metrics_dir": "$SCRATCH/mlserver-metrics",
  "environments_dir": "$SCRATCH/mlserver-envs",
  "load_models_at_startup": true
}
JSON

echo "serve.sh: starting MLServer (workers $WORKERS, max_batch_size $BATCH_SIZE," \
    "max_batch_time $BATCH_TIME, gRPC 127.0.0.1:$GRPC_PORT); log $LOG" >&2
# setsid: its own process group, so `stop` can also reap the inference worker processes.
(cd "$SCRATCH" && exec setsid "$VENV/bin/mlserver" start "$REPO") > "$LOG" 2>&1 < /dev/null &
pid=$!
echo "$pid" > "$SCRATCH/mlserver.pid"

# ServerReady is true while no model is registered (also after a model failed to load and
# was removed), so wait for ModelReady of the model itself, over gRPC.
start=$(date +%s.%N)
if ! "$PY" - "$pid" "127.0.0.1:$GRPC_PORT" "$READY_TIMEOUT" <<'PYEOF' >&2; then
import os, sys, time
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException
pid, url, timeout = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
deadline = time.monotonic() + timeout
client = grpcclient.InferenceServerClient(url)
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("serve.sh: MLServer exited during startup")
    try:
        if client.is_model_ready("digits-sklearn"):
            sys.exit(0)
    except InferenceServerException:
        pass
    time.sleep(0.1)
sys.exit(f"serve.sh: model not ready after {timeout:.0f} s")
PYEOF
    tail -n 30 "$LOG" >&2
    "$0" stop "$SCRATCH"
    exit 1
fi
echo "serve.sh: ready after $(awk "BEGIN{printf \"%.1f\", $(date +%s.%N) - $start}") s" >&2
echo "$pid"
