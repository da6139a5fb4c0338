#!/usr/bin/env bash
# The attacks of issue 16 against release builds, each on a fresh `sluice serve` process on
# loopback: what the server holds while attacked, and how long a healthy client waits. The
# figures go in docs/reliability.md.
#
#   benches/attacks/run.sh             # ~2 min after the build (it waits out the timeouts)
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --quiet --release -p sluice -p sluice-benches --bin sluice --bin attack-figures
"$TARGET/release/attack-figures" "$TARGET/release/sluice"
