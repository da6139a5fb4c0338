#!/usr/bin/env bash
# Instructions per request of the KServe REST server, counted by callgrind (valgrind from
# Debian's packages): repeatable whatever else the machine does, unlike throughput on 2 shared
# cores. The server runs under callgrind with digits-logreg loaded (compiled once beforehand,
# outside valgrind); counters are zeroed, N requests are sent one after another on one
# keep-alive connection, and the counters dumped: once for `GET /v2/health/live`, once for
# `POST /v2/models/digits-logreg/infer` with one JSON row. Prints each per request and the
# functions that cost infer the most (callgrind_annotate, self cost).
#
# Usage: benches/rest/instructions.sh          (builds the release binary first)
#        SLUICE=path/to/sluice N=2000 benches/rest/instructions.sh
# Settings: SERVE_ARGS (more `sluice serve` flags, e.g. `--otlp-endpoint URL`), SETTLE_S
# (seconds to wait after the requests before dumping, so that work the server does after
# answering, such as exporting spans, is counted; default 0).
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v valgrind >/dev/null || { echo "needs valgrind: apt-get install valgrind" >&2; exit 1; }
N=${N:-2000}
if [ -z "${SLUICE:-}" ]; then
    cargo build --release -p sluice >&2
    SLUICE="${CARGO_TARGET_DIR:-target}/release/sluice"
fi
WASM="${CARGO_TARGET_DIR:-target}/sample-models/wasm32-wasip2/release/digits_logreg.wasm"
PARAMS=sample-models/digits-logreg/params.slpm
WORK=$(mktemp -d)
trap 'kill $SERVER 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
serve() {  # serve [WRAPPER...]: a server on $WORK/cache; sets SERVER, GRPC and HTTP
    "$@" "$SLUICE" serve --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --no-state --no-samples \
        --cache-dir "$WORK/cache" ${SERVE_ARGS:-} >"$WORK/stdout" 2>"$WORK/log" &
    SERVER=$!
    for _ in $(seq 1200); do grep -q "^http on" "$WORK/stdout" 2>/dev/null && break; sleep 0.1; done
    GRPC=http://$(sed -n 's/^listening on //p' "$WORK/stdout")
    HTTP=$(sed -n 's/^http on //p' "$WORK/stdout")
    [ -n "$HTTP" ] || { cat "$WORK/log" >&2; echo "the server did not start" >&2; exit 1; }
    "$SLUICE" load "$WASM" --config "$PARAMS" --name digits-logreg --server "$GRPC" >/dev/null
}
serve                                     # compiles the component into the cache
kill $SERVER; wait $SERVER 2>/dev/null || true
serve valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out"
send() {  # send live|infer COUNT
    python3 - "$HTTP" "$1" "$2" <<'PY'
import http.client, json, sys
host, port = sys.argv[1].split(":")
what, count = sys.argv[2], int(sys.argv[3])
pixels = open("sample-models/data/digits.csv").read().splitlines()[1].split(",")[:64]
body = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                               "data": [float(p) for p in pixels]}]})
connection = http.client.HTTPConnection(host, int(port))
for _ in range(count):
    if what == "infer":
        connection.request("POST", "/v2/models/digits-logreg/infer", body,
                           {"content-type": "application/json"})
    else:
        connection.request("GET", "/v2/health/live")
    response = connection.getresponse()
    response.read()
    assert response.status == 200, response.status
PY
}
send infer 50; send live 50               # warm up
for what in live infer; do
    callgrind_control --zero "$SERVER" >/dev/null
    send "$what" "$N"
    sleep "${SETTLE_S:-0}"
    callgrind_control --dump="$what" "$SERVER" >/dev/null
done
for part in 1 2; do
    file="$WORK/cg.out.$part"
    what=$(sed -n 's/^desc: Trigger: dump //p' "$file")
    total=$(sed -n 's/^summary: //p' "$file")
    echo "$what: $(( total / N )) instructions per request ($total for $N)"
done
echo "infer, the functions that cost most (self):"
callgrind_annotate --inclusive=no "$WORK/cg.out.2" 2>/dev/null | grep -E '^ *[0-9,]+ \(' | sed -n 2,16p | cut -c1-150
