#!/usr/bin/env bash
# sluice against Seldon MLServer (issue 10): the same digits classifier, a logistic regression,
# served by both over gRPC with the Open Inference Protocol on loopback, driven by the same load
# generator (`sluice bench --protocol kserve`, closed loop, one row per request) at concurrency
# 1, 16, 64 and 256, with adaptive batching off and on for each. Prints one table (with the
# server's own CPU time per request, all its processes counted) and the throughput of each
# system at p99 <= 20 ms. The systems run one after the other, never at the same time; the load
# generator shares the machine with the server under test.
#
#   benches/compare/run.sh            # ~3 minutes after the first build and venv
#   DURATION=10 benches/compare/run.sh
#
# sluice: a release `sluice serve` of the bundled digits-logreg (2 replicas), once as
# `digits-logreg` (AIMD batching, 20 ms SLO) and once as `digits-logreg-nobatch` (no batching).
# MLServer 1.7 (mlserver-sklearn, pinned in mlserver/requirements.txt, installed in a venv):
# scikit-learn's StandardScaler + LogisticRegression on the same training split
# (mlserver/train.py), 1 inference worker (MLServer's default); batching on is
# max_batch_size 32, max_batch_time 5 ms.
#
# Results (one JSON per run, summary.md, throughput.svg) go to $OUT (default
# $CARGO_TARGET_DIR/compare).
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-5}
TARGET=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET/compare}
VENV=${VENV:-$HOME/.cache/sluice-ci/mlserver-venv}
PORT=${PORT:-18001}
CONCURRENCY=${CONCURRENCY:-"1 16 64 256"}
rm -rf "$OUT" && mkdir -p "$OUT"

echo "==> building sluice (release)"
cargo build --release -p sluice 2>&1 | tail -1
SLUICE="$TARGET/release/sluice"

echo "==> MLServer's virtualenv ($VENV)"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r benches/compare/mlserver/requirements.txt

# CPU seconds (user + system) used so far by every process of process group $1.
group_cpu() {
    python3 -c '
import os, sys
pgid, total = int(sys.argv[1]), 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    if int(fields[2]) == pgid:
        total += int(fields[11]) + int(fields[12])
print(total / os.sysconf("SC_CLK_TCK"))' "$1"
}

# One closed-loop run: bench SYSTEM BATCHING URL MODEL CONCURRENCY SERVER_PGID
bench() {
    local system=$1 batching=$2 url=$3 model=$4 c=$5 pgid=$6
    local before; before=$(group_cpu "$pgid")
    "$SLUICE" bench "$model" --protocol kserve --server "$url" --concurrency "$c" \
        --connections "$(( c < 4 ? c : 4 ))" --duration "$DURATION" \
        --json "$OUT/$system-$batching-c$c.json" | sed -n '2,3p'
    echo "$before $(group_cpu "$pgid")" > "$OUT/$system-$batching-c$c.cpu"
}

echo "==> sluice"
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "run.sh: 127.0.0.1:$PORT is already in use (a server left running?)" >&2
    exit 1
fi
REPO="$OUT/sluice-repo"
"$SLUICE" init-repo "$OUT/samples" >/dev/null
for variant in digits-logreg digits-logreg-nobatch; do
    mkdir -p "$REPO/$variant/1"
    cp "$OUT/samples/digits-logreg/1/"{model.wasm,params.slpm} "$REPO/$variant/1/"
done
printf 'replicas = 2\nconfig = "params.slpm"\n[batching]\nmode = "adaptive"\nslo_ms = 20\n' \
    > "$REPO/digits-logreg/1/config.toml"
printf 'replicas = 2\nconfig = "params.slpm"\n[batching]\nmode = "none"\n' \
    > "$REPO/digits-logreg-nobatch/1/config.toml"
# In a session of its own, so that its process group holds exactly the server (for group_cpu).
setsid bash -c 'echo $$ > "$0"; exec "$@"' "$OUT/sluice.pid" \
    "$SLUICE" serve --repository "$REPO" --no-watch --no-state --listen "127.0.0.1:$PORT" \
    --http-listen "127.0.0.1:$((PORT + 1))" --cache-dir "$TARGET/bench-cache" \
    > "$OUT/sluice.log" 2>&1 &
for _ in $(seq 100); do [ -s "$OUT/sluice.pid" ] && break; sleep 0.05; done
SERVER=$(cat "$OUT/sluice.pid")
trap 'kill $SERVER 2>/dev/null || true; benches/compare/mlserver/serve.sh stop "$OUT" || true' EXIT
for _ in $(seq 300); do grep -q "listening on" "$OUT/sluice.log" && break; sleep 0.1; done
for c in $CONCURRENCY; do
    echo "-- sluice, no batching, concurrency $c"
    bench sluice off "http://127.0.0.1:$PORT" digits-logreg-nobatch "$c" "$SERVER"
    echo "-- sluice, adaptive batching, concurrency $c"
    bench sluice on "http://127.0.0.1:$PORT" digits-logreg "$c" "$SERVER"
done
kill "$SERVER"
while kill -0 "$SERVER" 2>/dev/null; do sleep 0.1; done

for batching in off on; do
    echo "==> MLServer, batching $batching"
    size=0; [ "$batching" = on ] && size=32
    MLS_BATCH_SIZE=$size MLS_BATCH_TIME=0.005 \
        benches/compare/mlserver/serve.sh "$VENV" "$OUT" >/dev/null
    # The peer must be right before it is timed: its answers against scikit-learn's own.
    "$VENV/bin/python" benches/compare/mlserver/check.py "$OUT/mlserver-repo/digits-sklearn" | tail -1
    for c in $CONCURRENCY; do
        echo "-- MLServer, batching $batching, concurrency $c"
        bench mlserver "$batching" "http://127.0.0.1:18081" digits-sklearn "$c" \
            "$(cat "$OUT/mlserver.pid")"
    done
    benches/compare/mlserver/serve.sh stop "$OUT"
done

echo "==> summary ($OUT/summary.md)"
python3 - "$OUT" <<'PY' | tee "$OUT/summary.md"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
runs = []
for path in sorted(out.glob("*-c*.json")):
    system, batching, c = path.stem.rsplit("-", 2)
    r = json.loads(path.read_text())
    before, after = map(float, path.with_suffix(".cpu").read_text().split())
    r["cpu_us"] = (after - before) * 1e6 / max(r["ok"], 1)
    runs.append((system, batching, int(c[1:]), r))
print("| system | batching | concurrency | req/s | p50 ms | p99 ms | errors | server CPU µs/req |")
print("|---|---|---|---|---|---|---|---|")
for system, batching, c, r in sorted(runs, key=lambda x: (x[0] != "sluice", x[1], x[2])):
    errors = sum(r["errors"].values())
    print(f"| {system} | {batching} | {c} | {r['throughput_rps']:.0f} | "
          f"{r['latency_ms']['p50']:.3f} | {r['latency_ms']['p99']:.3f} | {errors} | "
          f"{r['cpu_us']:.1f} |")
best = {}
for system, batching, c, r in runs:
    if r["latency_ms"]["p99"] <= 20 and not r["errors"]:
        if r["throughput_rps"] > best.get(system, (0, ""))[0]:
            best[system] = (r["throughput_rps"], f"batching {batching}, concurrency {c}")
print()
for system, (tput, where) in sorted(best.items()):
    print(f"- {system}: {tput:.0f} req/s at p99 <= 20 ms ({where})")
if "sluice" in best and "mlserver" in best:
    print(f"- ratio: {best['sluice'][0] / best['mlserver'][0]:.1f}x")
cheapest = {}
for system, batching, c, r in runs:
    cheapest[system] = min(cheapest.get(system, float("inf")), r["cpu_us"])
if len(cheapest) == 2:
    print(f"- server CPU per request, lowest: sluice {cheapest['sluice']:.1f} µs, MLServer "
          f"{cheapest['mlserver']:.1f} µs ({cheapest['mlserver'] / cheapest['sluice']:.0f}x)")

# throughput.svg: req/s by concurrency (log scale), one bar per system and batching; a bar
# whose p99 is over 20 ms is drawn hollow.
import math
series = [("sluice", "on", "#1f77b4"), ("sluice", "off", "#9ecae1"),
          ("mlserver", "on", "#d62728"), ("mlserver", "off", "#fc9272")]
levels = sorted({c for _, _, c, _ in runs})
by_key = {(s, b, c): r for s, b, c, r in runs}
width, height, left, bottom, top = 640, 320, 60, 40, 20
plot_h = height - bottom - top
lo, hi = 1, 6  # 10 .. 1e6 req/s, log10
def y(v):
    return top + plot_h * (1 - (math.log10(max(v, 10)) - lo) / (hi - lo))
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
       f'font-family="sans-serif" font-size="11">', f'<rect width="{width}" height="{height}" fill="white"/>']
for e in range(lo, hi + 1):
    svg.append(f'<line x1="{left}" x2="{width - 10}" y1="{y(10**e):.1f}" y2="{y(10**e):.1f}" stroke="#ddd"/>')
    svg.append(f'<text x="{left - 6}" y="{y(10**e) + 4:.1f}" text-anchor="end">1e{e}</text>')
group_w = (width - left - 10) / len(levels)
bar_w = group_w / (len(series) + 1)
for i, c in enumerate(levels):
    x0 = left + i * group_w + bar_w / 2
    svg.append(f'<text x="{x0 + bar_w * len(series) / 2:.1f}" y="{height - bottom + 16}" '
               f'text-anchor="middle">concurrency {c}</text>')
    for j, (system, batching, colour) in enumerate(series):
        r = by_key.get((system, batching, c))
        if not r:
            continue
        top_y = y(r["throughput_rps"])
        fill = colour if r["latency_ms"]["p99"] <= 20 else "none"
        svg.append(f'<rect x="{x0 + j * bar_w:.1f}" y="{top_y:.1f}" width="{bar_w - 2:.1f}" '
                   f'height="{top + plot_h - top_y:.1f}" fill="{fill}" stroke="{colour}"/>')
for j, (system, batching, colour) in enumerate(series):
    svg.append(f'<rect x="{left + 10 + j * 140}" y="4" width="10" height="10" fill="{colour}"/>')
    svg.append(f'<text x="{left + 24 + j * 140}" y="13">{system}, batching {batching}</text>')
svg.append(f'<text x="12" y="{top + plot_h / 2}" transform="rotate(-90 12 {top + plot_h / 2})" '
           f'text-anchor="middle">requests/s (hollow: p99 over 20 ms)</text></svg>')
(out / "throughput.svg").write_text("\n".join(svg) + "\n")
PY
