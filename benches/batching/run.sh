#!/usr/bin/env bash
# The batching experiment (issue 3): for each sample model, batch size 1 vs static sizes vs AIMD
# vs AIMD + delayed batching, at a 20 ms SLO, under open-loop Poisson load (RATE req/s, by
# default 40000: as much as the load generator can offer on 2 cores, and more than batch size 1
# can serve); then closed-loop throughput against the number of replicas. Every run is a
# `sluice bench` against a release `sluice serve` on loopback, on the same machine.
#
#   benches/batching/run.sh                 # ~4 minutes; DURATION=5 for a quicker pass
#
# Writes one JSON file per run and summary.md + throughput.svg to $OUT
# (default target/batching-experiment).
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-10}
RATE=${RATE:-40000}
TARGET=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET/batching-experiment}
PORT=${PORT:-8031}
mkdir -p "$OUT"

cargo build --release -p sluice
SLUICE="$TARGET/release/sluice"
WASM="$TARGET/sample-models/wasm32-wasip2/release"
export SLUICE_SERVER="http://127.0.0.1:$PORT"

"$SLUICE" serve --no-samples --listen "127.0.0.1:$PORT" --cache-dir "$TARGET/bench-cache" \
    > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "listening on" "$OUT/server.log" && break; sleep 0.1; done

echo -n 40000000 > "$OUT/fixed-cost.cfg" # ~0.7 ms of work per call, ~nothing per row

# model name -> "component config"
declare -A MODELS=(
    [logreg]="digits_logreg.wasm sample-models/digits-logreg/params.slpm"
    [mlp]="digits_mlp.wasm sample-models/digits-mlp/params.slpm"
    [fixed-cost]="fixed_cost.wasm $OUT/fixed-cost.cfg"
)
# mode name -> batching flags
declare -A MODES=(
    [b1]="--batching none"
    [static8]="--batching static --batch-size 8"
    [static32]="--batching static --batch-size 32"
    [aimd]="--batching adaptive"
    [aimd-delay]="--batching adaptive --max-delay-us 2000"
)

load() { # name component config replicas flags...
    local name=$1 component=$2 config=$3 replicas=$4
    shift 4
    "$SLUICE" load "$WASM/$component" --config "$config" --name "$name" \
        --replicas "$replicas" --slo-ms 20 "$@" > /dev/null
}

for model in logreg mlp fixed-cost; do
    read -r component config <<< "${MODELS[$model]}"
    for mode in b1 static8 static32 aimd aimd-delay; do
        # shellcheck disable=SC2086
        load "$model-$mode" "$component" "$config" 1 ${MODES[$mode]}
        echo "== $model $mode"
        "$SLUICE" bench "$model-$mode" --rate "$RATE" --duration "$DURATION" \
            --json "$OUT/modes-$model-$mode.json" | sed 's/^/   /'
        "$SLUICE" unload "$model-$mode" > /dev/null
    done
done

# Replicas: closed loop (64 clients), which measures the most the server can do.
for model in logreg fixed-cost; do
    read -r component config <<< "${MODELS[$model]}"
    for replicas in 1 2 4; do
        load "$model-r$replicas" "$component" "$config" "$replicas" --batching adaptive
        echo "== $model aimd, $replicas replicas"
        "$SLUICE" bench "$model-r$replicas" --concurrency 64 --duration "$DURATION" \
            --json "$OUT/replicas-$model-$replicas.json" | sed 's/^/   /'
        "$SLUICE" unload "$model-r$replicas" > /dev/null
    done
done

python3 benches/batching/summarize.py "$OUT"
