#!/usr/bin/env bash
# Runs each fuzz target for a bounded time (default 60 s; FUZZ_SECONDS to change). Needs the
# nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Not run in CI.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${FUZZ_SECONDS:-60}
for target in json_tensors tensor_checks component_load; do
    echo "== $target ($SECONDS_EACH s)"
    # A copy of the committed seeds, so the run's discoveries do not pile up in the repo.
    work=$(mktemp -d)
    cp -r "corpus/$target/." "$work/"
    cargo +nightly fuzz run --sanitizer none "$target" "$work" -- \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb=4096 2>&1 | tail -n 3
    rm -rf "$work"
done
