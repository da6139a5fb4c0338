#!/usr/bin/env bash
# Many models on one host (issue 19), first figures: a repository of N variants of
# digits-logreg (the same component and parameters, hard-linked; each `replicas = 0` with
# `min_replicas = 0`, so a variant holds no instance until asked), served by a release
# `sluice serve`. Measures the start-up with an empty compiled-code cache and again with a
# warm one (until the log says the repository loaded), the server's resident memory, and the
# latency of the first request to each of M variants (it starts the variant's replica) against
# a second request to the same variant, one at a time over one HTTP/1.1 connection.
#
# Usage: benches/many-models/run.sh                  (builds the release binary first)
#        SLUICE=path/to/sluice N=10000 M=500 benches/many-models/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-10000}
M=${M:-500}
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
        >"$WORK/stdout" 2>"$WORK/log" &
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

