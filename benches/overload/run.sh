#!/usr/bin/env bash
# Overload and recovery (issue 7): one replica's sustained throughput, then 2 s of open-loop
# load at 10x that rate, then the time until the replica serves at >= 90% of its throughput
# again. Every request of the burst is counted by status; the server's resident memory is read
# before and after. The server is a separate `sluice serve` process on loopback.
#
#   benches/overload/run.sh             # ~10 s after the build
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --quiet -p sluice -p sluice-benches --bin sluice --bin overload-recovery
"$TARGET/debug/overload-recovery" "$TARGET/debug/sluice"
