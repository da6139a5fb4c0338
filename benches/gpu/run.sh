#!/usr/bin/env bash
# The GPU backend's figures on a machine with a GPU (the figures in docs/benchmarks.md):
# builds the `compute` criterion bench, runs matmul at 1024² and 4096² and end-to-end predict of
# the MLP and the CNN at batch 1 and 256 on the GPU and on the CPU backend, and prints a table
# with GFLOP/s and latencies. Meant to take under 5 minutes on a 16-core machine, most of it
# the release build; not yet run on one (no GPU machine was lent so far). On this project's
# 2-core machine, with the build cached and LARGE=0, it took 1 minute on lavapipe.
#
#   benches/gpu/run.sh                  # both backends; needs a GPU (any wgpu adapter)
#   BACKENDS=gpu benches/gpu/run.sh     # the GPU only
#   LARGE=0 benches/gpu/run.sh          # skip 4096² (minutes on a software adapter)
#
# Needs: the Rust toolchain with wasm32-wasip2 (as in .ci/run) and a Vulkan driver (on NVIDIA,
# the proprietary driver's ICD; on a CPU-only machine, Mesa's lavapipe: mesa-vulkan-drivers).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
BACKENDS="${BACKENDS:-gpu,cpu}"
LARGE="${LARGE:-1}"

rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

echo "==> building the compute bench (release)"
cargo bench -p sluice-benches --bench compute --no-run 2>&1 | tail -1

echo "==> running (backends: $BACKENDS; log in $CARGO_TARGET_DIR/gpu-bench.log)"
rm -rf "$CARGO_TARGET_DIR/criterion/matmul" "$CARGO_TARGET_DIR/criterion/predict"
filter='^(matmul/[a-z]+/(1024|4096)|predict/.*)$'
[ "$LARGE" = 1 ] && export SLUICE_BENCH_LARGE=1
SLUICE_BENCH_BACKENDS="$BACKENDS" cargo bench -p sluice-benches --bench compute -- \
    --warm-up-time 1 --measurement-time 3 "$filter" >"$CARGO_TARGET_DIR/gpu-bench.log" 2>&1
grep -m1 -E "gpu backend" "$CARGO_TARGET_DIR/gpu-bench.log" || true

echo "==> summary"
python3 - "$CARGO_TARGET_DIR/criterion" <<'PY'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
def mean_ns(*parts):
    path = root.joinpath(*parts, "new", "estimates.json")
    return json.loads(path.read_text())["mean"]["point_estimate"] if path.exists() else None
print(f"{'matmul':<22} {'backend':<8} {'time':>12} {'GFLOP/s':>10}")
for n in (1024, 4096):
    for backend in ("gpu", "cpu"):
        ns = mean_ns("matmul", backend, str(n))
        if ns:
            print(f"{f'{n}x{n}':<22} {backend:<8} {ns / 1e6:>9.2f} ms {2 * n**3 / ns:>10.1f}")
print(f"\n{'predict':<22} {'backend':<8} {'batch':>6} {'latency':>12}")
for model in ("digits-mlp", "digits-cnn"):
    for backend in ("gpu", "cpu"):
        for batch in (1, 256):
            ns = mean_ns("predict", f"{model}_{backend}", str(batch))
            if ns:
                print(f"{model:<22} {backend:<8} {batch:>6} {ns / 1e3:>9.1f} µs")
PY
