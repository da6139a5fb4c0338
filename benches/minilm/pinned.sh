#!/usr/bin/env bash
# MiniLM served by sluice against ONNX Runtime in process (benches/minilm/compare.py), with
# one core for each side's engine: the server pinned to CPU 1 with one graph thread, the
# client, and the in-process engine with one intra-op thread, pinned to CPU 0. On 2 vCPUs
# this keeps the served side's client off the engine's core, so the two engines run under the
# same conditions (compare.py unpinned lets the in-process engine have both cores while the
# served one shares them with its client).
#
# Usage: benches/minilm/pinned.sh ASSETS      (ASSETS: what sample-models/minilm/fetch.py wrote)
# VENV: a virtualenv with numpy, onnxruntime==1.22.1, tokenizers and tritonclient[grpc]
# (made here if missing). SLUICE: the server binary (default: the release build, built here).
set -euo pipefail
cd "$(dirname "$0")/../.."
ASSETS=$(cd "${1:?usage: pinned.sh ASSETS}" && pwd)
VENV=${VENV:-$HOME/.cache/sluice-ci/minilm-bench}
TARGET=${CARGO_TARGET_DIR:-target}
if [ -z "${SLUICE:-}" ]; then
    cargo build --release -p sluice >&2
    SLUICE="$TARGET/release/sluice"
fi
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check onnxruntime==1.22.1 tokenizers numpy "tritonclient[grpc]"
WORK=$(mktemp -d)
SERVER=
trap 'kill $SERVER 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
mkdir -p "$WORK/repo/minilm-encoder/1"
cp -r "$ASSETS/minilm" "$WORK/repo/"
cp "$TARGET/sample-models/wasm32-wasip2/release/minilm.wasm" "$WORK/repo/minilm/1/model.wasm"
ln -s "$ASSETS/minilm/1/encoder.onnx" "$WORK/repo/minilm-encoder/1/model.onnx"
ln -s "$ASSETS/minilm/1/model.safetensors" "$WORK/repo/minilm-encoder/1/model.safetensors"
taskset -c 1 "$SLUICE" serve --repository "$WORK/repo" --onnxruntime "$ASSETS/libonnxruntime.so" \
    --graph-threads 1 --no-state --cache-mib 0 --cache-dir "$WORK/cache" \
    --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 >"$WORK/stdout" 2>"$WORK/log" &
SERVER=$!
for _ in $(seq 600); do
    grep -q "model repository loaded" "$WORK/log" 2>/dev/null && grep -q "^listening on" "$WORK/stdout" && break
    kill -0 $SERVER 2>/dev/null || { cat "$WORK/log" >&2; exit 1; }
    sleep 0.1
done
GRPC=$(sed -n 's/^listening on //p' "$WORK/stdout")
taskset -c 0 "$VENV/bin/python" benches/minilm/compare.py "$ASSETS" "$GRPC" --threads 1 --encoder
