#!/usr/bin/env bash
# What tracing costs the KServe REST path: instructions per `POST .../digits-logreg/infer`
# (callgrind, `benches/rest/instructions.sh`) and throughput beside the no-op endpoint (wrk,
# `benches/rest/run.sh`), with tracing off, on at sampling 1.0 and on at 0.01, exporting to an
# OTLP/gRPC receiver that only counts (`otlp-sink`). With BASELINE set to a `sluice` built
# from the commit before tracing existed, the same figures for it come first, so that "off"
# can be compared with "absent".
#
# Usage: benches/traces/run.sh                       (builds the release binaries first)
#        SLUICE=path/to/sluice BASELINE=/tmp/sluice-before benches/traces/run.sh
# Settings: N (requests per callgrind count, default 2000), ROUNDS and SECONDS_EACH (wrk,
# defaults 3 and 8), THROUGHPUT=0 to skip the wrk runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET=${CARGO_TARGET_DIR:-target}
if [ -z "${SLUICE:-}" ]; then
    cargo build --release -p sluice --bin sluice >&2
    SLUICE="$TARGET/release/sluice"
fi
cargo build --release -p sluice-benches --bin otlp-sink >&2
WORK=$(mktemp -d)
trap 'kill $SINK 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
# The receiver shares the load generator's core (core 1) when the scripts pin.
taskset -c 1 "$TARGET/release/otlp-sink" "$WORK/spans" >"$WORK/sink" &
SINK=$!
for _ in $(seq 100); do grep -q "^otlp on" "$WORK/sink" 2>/dev/null && break; sleep 0.1; done
OTLP="http://$(sed -n 's/^otlp on //p' "$WORK/sink")"
# Spans leave the batch processor every 200 ms instead of 5 s, and the callgrind count waits
# for them, so that exporting is inside what is counted.
export OTEL_BSP_SCHEDULE_DELAY=200
configurations=()
[ -n "${BASELINE:-}" ] && configurations+=("before tracing|$BASELINE|")
configurations+=(
    "tracing off|$SLUICE|"
    "tracing on, sampling 1.0|$SLUICE|--otlp-endpoint $OTLP --trace-sampling 1.0"
    "tracing on, sampling 0.01|$SLUICE|--otlp-endpoint $OTLP --trace-sampling 0.01"
)
for configuration in "${configurations[@]}"; do
    IFS='|' read -r name binary flags <<<"$configuration"
    before=$(cat "$WORK/spans")
    echo "== $name"
    SLUICE=$binary SERVE_ARGS=$flags SETTLE_S=3 N=${N:-2000} benches/rest/instructions.sh | sed -n 1,2p
    if [ "${THROUGHPUT:-1}" = 1 ]; then
        SLUICE=$binary SERVE_ARGS=$flags ROUNDS=${ROUNDS:-3} SECONDS_EACH=${SECONDS_EACH:-8} \
            benches/rest/run.sh 2>/dev/null
    fi
    sleep 1
    echo "spans received: $(( $(cat "$WORK/spans") - before ))"
done
