#!/usr/bin/env bash
# KServe v2 REST throughput: `POST /v2/models/digits-logreg/infer` (one JSON row) against the
# no-op `GET /v2/health/live`, on the same server in the same run, with wrk (Debian's `wrk`)
# at -t1 -c64, alternating, in rounds. Prints the median rate of each and the median of the
# rounds' infer / no-op ratios (each ratio from two runs a few seconds apart, so that the
# machine's drift affects both alike).
#
# Usage: benches/rest/run.sh            (builds the release binary first)
#        SLUICE=path/to/sluice benches/rest/run.sh
# Settings: SECONDS_EACH (default 8), ROUNDS (default 5), SERVE_ARGS (more `sluice serve`
# flags, e.g. `--otlp-endpoint URL`), PIN (default 1: the server on core 0 and wrk on core
# 1, with taskset, so that the two do not trade cores between runs; unpinned, on 2 cores, one
# binary's rounds ranged from 45% to 88%).
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v wrk >/dev/null || { echo "needs wrk: apt-get install wrk" >&2; exit 1; }
SECONDS_EACH=${SECONDS_EACH:-8}
ROUNDS=${ROUNDS:-5}
SERVER_CPU=() CLIENT_CPU=()
if [ "${PIN:-1}" = 1 ] && [ "$(nproc)" -ge 2 ]; then
    SERVER_CPU=(taskset -c 0) CLIENT_CPU=(taskset -c 1)
fi
if [ -z "${SLUICE:-}" ]; then
    cargo build --release -p sluice >&2
    SLUICE="${CARGO_TARGET_DIR:-target}/release/sluice"
fi
WORK=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
"${SERVER_CPU[@]}" "$SLUICE" serve --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --no-state \
    --cache-dir "$WORK/cache" --sample-replicas 1 ${SERVE_ARGS:-} >"$WORK/stdout" 2>"$WORK/log" &
SERVER=$!
for _ in $(seq 600); do grep -q "^http on" "$WORK/stdout" 2>/dev/null && break; sleep 0.1; done
HTTP=$(sed -n 's/^http on //p' "$WORK/stdout")
[ -n "$HTTP" ] || { cat "$WORK/log" >&2; echo "the server did not start" >&2; exit 1; }
# One held-out digit as a KServe JSON request.
PIXELS=$(sed -n 2p sample-models/data/digits.csv | cut -d, -f1-64)
BODY="{\"inputs\":[{\"name\":\"pixels\",\"datatype\":\"FP32\",\"shape\":[1,64],\"data\":[$PIXELS]}]}"
# The bundled models load after the port opens: wait until the model answers.
for _ in $(seq 600); do
    curl -sf -X POST -H 'content-type: application/json' -d "$BODY" \
        "http://$HTTP/v2/models/digits-logreg/infer" >/dev/null && break
    sleep 0.1
done
curl -sf -X POST -H 'content-type: application/json' -d "$BODY" \
    "http://$HTTP/v2/models/digits-logreg/infer" >/dev/null || { echo "infer failed" >&2; exit 1; }
cat >"$WORK/infer.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$BODY'
LUA
rate() { "${CLIENT_CPU[@]}" wrk -t1 -c64 -d"${SECONDS_EACH}s" "$@" | awk '/Requests\/sec/ {print $2}'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
: >"$WORK/live"; : >"$WORK/infer"; : >"$WORK/ratio"
for round in $(seq "$ROUNDS"); do
    live=$(rate "http://$HTTP/v2/health/live")
    infer=$(rate -s "$WORK/infer.lua" "http://$HTTP/v2/models/digits-logreg/infer")
    echo "$live" >>"$WORK/live"; echo "$infer" >>"$WORK/infer"
    awk -v i="$infer" -v l="$live" 'BEGIN {print 100 * i / l}' >>"$WORK/ratio"
    echo "round $round: live $live req/s, infer $infer req/s" >&2
done
echo "GET /v2/health/live                  $(median <"$WORK/live") req/s (median of $ROUNDS x ${SECONDS_EACH}s)"
echo "POST /v2/models/digits-logreg/infer  $(median <"$WORK/infer") req/s"
printf 'infer / live                         %.0f%% (median of the rounds; each: %s)\n' \
    "$(median <"$WORK/ratio")" "$(awk '{printf "%s%.0f%%", (NR > 1 ? " " : ""), $1}' "$WORK/ratio")"
