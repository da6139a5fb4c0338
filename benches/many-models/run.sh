#!/usr/bin/env bash
# Many models on one host (issue 19), first figures: a repository of N variants of
# digits-logreg (the same component and parameters, hard-linked; each `replicas = 0` with
# `min_replicas = 0`, so a variant holds no instance until asked), served by a release
# `sluice serve`. Measures the start-up with an empty compiled-code cache and again with a
# warm one (until the log says the repository loaded), the server's resident memory, and the
# latency of the first request to each of M variants (it starts the variant's replica) against
# a second request to the same variant, one at a time over one HTTP/1.1 connection. Then,
# restarted under `--memory-budget BUDGET` (default: room for about 1 000 replicas), REQUESTS
# requests drawn from a Zipf distribution (exponent 1.1) over the variants, from CLIENTS
# connections: throughput, latency for the 100 most popular variants (always resident) and
# for those ranked past 2 000 (mostly evicted, so their request starts a replica), cold
# starts and evictions per second, and the resident count and memory at the end.
#
# Usage: benches/many-models/run.sh                  (builds the release binary first)
#        SLUICE=path/to/sluice N=10000 M=500 REQUESTS=50000 CLIENTS=4 benches/many-models/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-10000}
M=${M:-500}
BUDGET=${BUDGET:-1100MiB}
REQUESTS=${REQUESTS:-50000}
CLIENTS=${CLIENTS:-4}
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
cp sample-models/digits-logreg/params.slpm "$WORK/params.slpm"
printf 'replicas = 0\nmin_replicas = 0\nmax_replicas = 1\nconfig = "params.slpm"\n' >"$WORK/config.toml"
for i in $(seq "$N"); do
    mkdir -p "$WORK/repo/m$i/1"
    ln "$WORK/model.wasm" "$WORK/config.toml" "$WORK/params.slpm" "$WORK/repo/m$i/1/"
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
python3 - "$HTTP" "$N" "$REQUESTS" "$CLIENTS" <<'PY'
import bisect, http.client, itertools, json, random, sys, threading, time
host, port = sys.argv[1].split(":")
n, total, clients = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
pixels = open("sample-models/data/digits.csv").read().splitlines()[1].split(",")[:64]
body = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                               "data": [float(p) for p in pixels]}]})
# Zipf over ranks 1..n; rank r is variant m<r>.
cumulative = list(itertools.accumulate(1 / r ** 1.1 for r in range(1, n + 1)))
def draw(rng):
    return bisect.bisect(cumulative, rng.random() * cumulative[-1]) + 1
results, lock = [], threading.Lock()
def client(seed, count):
    rng, mine = random.Random(seed), []
    connection = http.client.HTTPConnection(host, int(port))
    for _ in range(count):
        rank = draw(rng)
        began = time.perf_counter()
        connection.request("POST", f"/v2/models/m{rank}/infer", body, {"content-type": "application/json"})
        response = connection.getresponse()
        response.read()
        mine.append((rank, (time.perf_counter() - began) * 1000, response.status))
    with lock:
        results.extend(mine)
began = time.perf_counter()
threads = [threading.Thread(target=client, args=(seed, total // clients)) for seed in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
elapsed = time.perf_counter() - began
failed = sum(1 for _, _, status in results if status != 200)
def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else float("nan")
print(f"Zipf: {len(results)} requests in {elapsed:.1f} s ({len(results) / elapsed:.0f} req/s, {clients} connections), {failed} failed, {len({r for r, _, _ in results})} distinct variants")
for name, keep in (("ranks 1-100", lambda r: r <= 100), ("ranks > 2000", lambda r: r > 2000), ("all", lambda r: True)):
    values = [ms for r, ms, _ in results if keep(r)]
    print(f"  {name:13} p50 {pct(values, 50):.2f} ms, p99 {pct(values, 99):.2f} ms ({len(values)} requests)")
PY
cold=$(( $(metric_sum sluice_cold_start_seconds_count) - cold_before ))
evicted=$(( $(metric_sum sluice_evictions_total) - evicted_before ))
seconds=$(awk -v a="$zipf_began" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')
awk -v c="$cold" -v e="$evicted" -v s="$seconds" 'BEGIN {printf "  cold starts: %d (%.0f/s), evictions: %d (%.0f/s)\n", c, c / s, e, e / s}'
echo "  at the end: $(replicas), RSS $(rss_mib) MiB"
