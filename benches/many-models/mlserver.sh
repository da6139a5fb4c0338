#!/usr/bin/env bash
# MLServer beside benches/many-models/run.sh: N copies of the digits scikit-learn model
# (benches/compare/mlserver/train.py; one model.joblib, hard-linked, each under its own name
# m1 ... mN) in one MLServer 1.7 repository, one inference worker (its default), every model
# loaded at start (MLServer has no load on demand: a model is resident or not served). Measures
# how long until all N are ready, the memory of all its processes then (server and worker),
# and what each model adds; then DURATION seconds of the same Zipf traffic as run.sh
# (`sluice bench --protocol kserve --variants N --zipf ZIPF`, CLIENTS clients).
#
# Usage: N=1000 benches/many-models/mlserver.sh      (builds the release binary if SLUICE unset)
# VENV: a virtualenv with benches/compare/mlserver/requirements.txt (made here if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-1000}
DURATION=${DURATION:-20}
CLIENTS=${CLIENTS:-16}
ZIPF=${ZIPF:-1.1}
READY_TIMEOUT=${READY_TIMEOUT:-3600}
VENV=${VENV:-$HOME/.cache/sluice-ci/mlserver-venv}
HTTP_PORT=${HTTP_PORT:-18090}
GRPC_PORT=${GRPC_PORT:-18091}
TARGET=${CARGO_TARGET_DIR:-target}
if [ -z "${SLUICE:-}" ]; then
    cargo build --release -p sluice >&2
    SLUICE="$TARGET/release/sluice"
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r benches/compare/mlserver/requirements.txt
WORK=$(mktemp -d)
SERVER=
trap '[ -n "$SERVER" ] && kill -KILL -- "-$SERVER" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

"$VENV/bin/python" benches/compare/mlserver/train.py "$WORK/trained" >/dev/null
for i in $(seq "$N"); do
    mkdir -p "$WORK/repo/m$i"
    ln "$WORK/trained/model.joblib" "$WORK/repo/m$i/"
    sed "s/\"name\": \"[^\"]*\"/\"name\": \"m$i\"/" "$WORK/trained/model-settings.json" \
        >"$WORK/repo/m$i/model-settings.json"
done
cat >"$WORK/repo/settings.json" <<JSON
{"debug": false, "host": "127.0.0.1", "http_port": $HTTP_PORT, "grpc_port": $GRPC_PORT,
 "metrics_endpoint": null, "parallel_workers": 1, "load_models_at_startup": true,
 "environments_dir": "$WORK/envs"}
JSON
# Memory of every process of MLServer's group (server and inference worker), in MiB.
group_rss_mib() { ps -o rss= -g "$SERVER" | awk '{sum += $1} END {printf "%.0f", sum / 1024}'; }
ready() {
    curl -s -X POST "http://127.0.0.1:$HTTP_PORT/v2/repository/index" -H 'content-type: application/json' -d '{}' |
        "$VENV/bin/python" -c 'import json, sys; print(sum(m.get("state") == "READY" for m in json.load(sys.stdin)))' 2>/dev/null || echo 0
}

began=$(date +%s.%N)
(cd "$WORK" && exec setsid "$VENV/bin/mlserver" start "$WORK/repo") >"$WORK/log" 2>&1 </dev/null &
SERVER=$!
loaded=0
for _ in $(seq $((READY_TIMEOUT * 2))); do
    kill -0 "$SERVER" 2>/dev/null || { tail -20 "$WORK/log" >&2; exit 1; }
    loaded=$(ready)
    [ "$loaded" -ge "$N" ] && break
    sleep 0.5
done
took=$(awk -v a="$began" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
echo "MLServer: $loaded of $N models ready after $took s, RSS $(group_rss_mib) MiB (server and worker)"
echo "Zipf (exponent $ZIPF) over the $N models, sluice bench --protocol kserve, $CLIENTS clients, ${DURATION} s:"
"$SLUICE" bench 'm{}' --server "http://127.0.0.1:$GRPC_PORT" --protocol kserve --variants "$N" \
    --zipf "$ZIPF" --concurrency "$CLIENTS" --duration "$DURATION" | sed 's/^/  /'
echo "  at the end: RSS $(group_rss_mib) MiB"
