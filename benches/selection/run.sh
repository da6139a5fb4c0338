#!/usr/bin/env bash
# The model-selection experiment (issue 4): held-out digits streamed through applications with
# feedback, over gRPC to an in-process server on loopback. Three parts: concept drift (static,
# epsilon-greedy, Exp3, Exp4), stragglers at a tight and a loose SLO, and personalization
# (per-user state against one global state). Deterministic: fixed training, order and seeds.
#
#   benches/selection/run.sh            # ~2 minutes after the build
#
# Prints a summary and writes selection.json, selection-drift.svg and selection-personal.svg to
# $OUT (default target/selection).
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET=${CARGO_TARGET_DIR:-target}
OUT=${OUT:-$TARGET/selection}
cargo run --quiet -p sluice-benches --bin selection-experiment -- "$OUT"
