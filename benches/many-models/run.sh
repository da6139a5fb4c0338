#!/usr/bin/env bash
# Many models on one host: a repository of N variants of digits-logreg (one component,
# hard-linked, and each its own parameters: the trained weights with a bias moved by a few
# millionths, so no two configs are equal; each `replicas = 0` with `min_replicas = 0`, so a
# variant holds no instance until asked), served by a release `sluice serve`. Measures the start-up with an empty compiled-code cache and again with a
# warm one (until the log says the repository loaded), the server's resident memory, and the
# latency of the first request to each of M variants (it starts the variant's replica) against
# a second request to the same variant, one at a time over one HTTP/1.1 connection. Then,
# restarted under `--memory-budget BUDGET` (default: room for about 1 000 replicas), DURATION
# seconds of `sluice bench --variants N --zipf ZIPF` from CLIENTS clients: throughput, latency
# by popularity rank (the most popular stay resident; most requests past rank 1 000 start a
# replica), cold starts and evictions per second with the server's own cold-start times, and
# the resident count and memory at the end. Then the hot path: one variant under the same load
# right after that traffic (while the ~1 000 resident replicas are still there); and, ROUNDS
# times in turn, one resident variant among the N on a fresh server against the same model
# alone on a fresh server (HOT_S seconds each).
#
# Usage: benches/many-models/run.sh                  (builds the release binary first)
#        SLUICE=path/to/sluice N=10000 M=500 DURATION=20 CLIENTS=16 benches/many-models/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-10000}
M=${M:-500}
BUDGET=${BUDGET:-1100MiB}
DURATION=${DURATION:-20}
CLIENTS=${CLIENTS:-16}
ZIPF=${ZIPF:-1.1}
ROUNDS=${ROUNDS:-3}
HOT_S=${HOT_S:-15}
TARGET=${CARGO_TARGET_DIR:-target}
if [ -z "${SLUICE:-}" ]; then
    cargo build --release -p sluice >&2
    SLUICE="$TARGET/release/sluice"
fi
WASM="$TARGET/sample-models/wasm32-wasip2/release/digits_logreg.wasm"
[ -f "$WASM" ] || { echo "no $WASM: build sluice first (its build compiles the samples)" >&2; exit 1; }
WORK=$(mktemp -d)
SERVER=
trap 'kill $SERVER 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
cp "$WASM" "$WORK/model.wasm"
# Each variant's parameters: the bias (the last 10 FP32 of the file) moved by i millionths.
python3 - sample-models/digits-logreg/params.slpm "$WORK/params" "$N" <<'PY'
import os, struct, sys
trained, out, n = open(sys.argv[1], "rb").read(), sys.argv[2], int(sys.argv[3])
os.makedirs(out)
bias = struct.unpack("<10f", trained[-40:])
for i in range(1, n + 1):
    with open(f"{out}/{i}.slpm", "wb") as f:
        f.write(trained[:-40] + struct.pack("<10f", *(b + i * 1e-6 for b in bias)))
PY
printf 'replicas = 0\nmin_replicas = 0\nmax_replicas = 1\nconfig = "params.slpm"\n' >"$WORK/config.toml"
for i in $(seq "$N"); do
    mkdir -p "$WORK/repo/m$i/1"
    ln "$WORK/model.wasm" "$WORK/config.toml" "$WORK/repo/m$i/1/"
    ln "$WORK/params/$i.slpm" "$WORK/repo/m$i/1/params.slpm"
done
echo "repository: $N model directories"
rss_mib() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$SERVER/status"; }
start() {  # start LABEL: serves the repository and waits until it has loaded
    local began
    began=$(date +%s.%N)
    "$SLUICE" serve --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --no-state \
        --repository "$WORK/repo" --cache-dir "$WORK/cache" --max-instances 4096 \
        --memory-budget "${SERVE_BUDGET:-none}" >"$WORK/stdout" 2>"$WORK/log" &
    SERVER=$!
    for _ in $(seq 6000); do
        grep -q "model repository loaded" "$WORK/log" 2>/dev/null &&
            grep -q "^http on" "$WORK/stdout" 2>/dev/null && break
        kill -0 $SERVER 2>/dev/null || { cat "$WORK/log" >&2; exit 1; }
        sleep 0.1
    done
    HTTP=$(sed -n 's/^http on //p' "$WORK/stdout")
    GRPC=http://$(sed -n 's/^listening on //p' "$WORK/stdout")
    local loaded
    loaded=$(grep -o 'loaded=[0-9]* failed=[0-9]*' "$WORK/log" | tail -1)
    echo "$1: repository loaded in $(awk -v a="$began" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s ($loaded), RSS $(rss_mib) MiB"
}
start "start-up, empty code cache"
kill $SERVER; wait $SERVER 2>/dev/null || true
start "start-up, warm code cache"
replicas() { "$SLUICE" models --server "$GRPC" | awk 'NR > 1 && $1 ~ /^m[0-9]+$/ {n[$4 > 0 ? "with replicas" : "at zero"]++} END {printf "%d at zero, %d with replicas", n["at zero"], n["with replicas"]}'; }
echo "before any request: $(replicas)"
python3 - "$HTTP" "$N" "$M" <<'PY'
import http.client, json, random, sys, time
host, port = sys.argv[1].split(":")
n, m = int(sys.argv[2]), int(sys.argv[3])
pixels = open("sample-models/data/digits.csv").read().splitlines()[1].split(",")[:64]
body = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                               "data": [float(p) for p in pixels]}]})
connection = http.client.HTTPConnection(host, int(port))
def infer(model):
    began = time.perf_counter()
    connection.request("POST", f"/v2/models/{model}/infer", body, {"content-type": "application/json"})
    response = connection.getresponse()
    response.read()
    assert response.status == 200, (model, response.status)
    return (time.perf_counter() - began) * 1000
cold, hot = [], []
for i in random.Random(19).sample(range(1, n + 1), m):
    cold.append(infer(f"m{i}"))
    hot.append(infer(f"m{i}"))
def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]
for name, values in (("first request (starts a replica)", cold), ("second request", hot)):
    print(f"{name:34} p50 {pct(values, 50):.2f} ms, p99 {pct(values, 99):.2f} ms ({m} variants)")
PY
echo "after $M variants answered: RSS $(rss_mib) MiB; $(replicas)"
curl -s "http://$HTTP/metrics" | awk '/^sluice_model_resident_bytes/ && $2 > 0 {n++; sum += $2} END {if (n) printf "resident replicas by the budget'"'"'s estimate: %d, %.0f KiB each\n", n, sum / n / 1024}'


kill $SERVER; wait $SERVER 2>/dev/null || true
SERVE_BUDGET=$BUDGET start "start-up under --memory-budget $BUDGET"
metric_sum() { curl -s "http://$HTTP/metrics" | awk -v name="$1" '$1 ~ "^" name {sum += $2} END {printf "%d", sum}'; }
cold_before=$(metric_sum sluice_cold_start_seconds_count); evicted_before=$(metric_sum sluice_evictions_total)
zipf_began=$(date +%s.%N)
echo "Zipf (exponent $ZIPF) over the $N variants, sluice bench, $CLIENTS clients, ${DURATION} s:"
"$SLUICE" bench 'm{}' --server "$GRPC" --variants "$N" --zipf "$ZIPF" --concurrency "$CLIENTS" \
    --duration "$DURATION" | sed 's/^/  /'
cold=$(( $(metric_sum sluice_cold_start_seconds_count) - cold_before ))
evicted=$(( $(metric_sum sluice_evictions_total) - evicted_before ))
seconds=$(awk -v a="$zipf_began" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')
awk -v c="$cold" -v e="$evicted" -v s="$seconds" 'BEGIN {printf "  cold starts: %d (%.0f/s), evictions: %d (%.0f/s)\n", c, c / s, e, e / s}'
# The server's own cold-start times (start of a replica, code read back included), by bucket.
curl -s "http://$HTTP/metrics" | awk '/^sluice_cold_start_seconds_bucket/ {
        match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5); n[le] += $2; order[++k] = le
    } END {
        total = n["+Inf"]; if (!total) exit
        for (i = 1; i <= k; i++) if (!(order[i] in seen)) { seen[order[i]] = 1; les[++m] = order[i] }
        for (q = 1; q <= 2; q++) {
            want = (q == 1 ? 0.5 : 0.99) * total
            for (i = 1; i <= m; i++) if (n[les[i]] >= want) { printf "  server cold start p%s <= %s s\n", (q == 1 ? "50" : "99"), les[i]; break }
        }
    }'
echo "  at the end: $(replicas), RSS $(rss_mib) MiB"
echo "hot, right after the Zipf traffic: one variant, sluice bench, $CLIENTS clients, ${DURATION} s:"
"$SLUICE" bench m1 --server "$GRPC" --concurrency "$CLIENTS" --duration "$DURATION" | sed 's/^/  /'
kill $SERVER; wait $SERVER 2>/dev/null || true

# Hot, interleaved so the machine's drift falls on both sides: ROUNDS times, a fresh server
# with the N registered and one resident, then the same model alone on a fresh server, each
# warmed for 3 s and then driven for HOT_S seconds.
mkdir -p "$WORK/alone/m1/1"
cp "$WORK/model.wasm" "$WORK/params/1.slpm" "$WORK/alone/m1/1/"
sed 's/"params.slpm"/"1.slpm"/' "$WORK/config.toml" >"$WORK/alone/m1/1/config.toml"
mv "$WORK/repo" "$WORK/many"
echo "hot: m1 among $N registered against m1 alone, fresh servers, $ROUNDS rounds of ${HOT_S} s, $CLIENTS clients:"
for round in $(seq "$ROUNDS"); do
    for what in many alone; do
        ln -sfn "$WORK/$what" "$WORK/repo"
        SERVE_BUDGET=$BUDGET start "round $round, $what" >/dev/null
        "$SLUICE" bench m1 --server "$GRPC" --concurrency "$CLIENTS" --duration 3 >/dev/null
        echo "  round $round, $what: $("$SLUICE" bench m1 --server "$GRPC" --concurrency "$CLIENTS" --duration "$HOT_S" | sed -n 's/^ *[0-9]* ok of [0-9]* sent in [0-9.]*s: \([0-9]*\) req\/s.*/\1 req\/s/p')"
        kill $SERVER; wait $SERVER 2>/dev/null || true
    done
done
