#!/usr/bin/env bash
# Ray Serve's model multiplexing beside benches/many-models/run.sh: N copies of the digits
# scikit-learn model (benches/compare/mlserver/train.py; one model.joblib, hard-linked, under
# m1 ... mN), one deployment replica that keeps at most MAX_MODELS of them loaded (Ray's LRU
# past it; a model not loaded is read with joblib on its request), Ray's HTTP proxy on loopback.
# Measures the memory of every Ray process (the session started here) idle and after the
# traffic, and DURATION seconds of the same Zipf traffic as run.sh from CLIENTS clients
# (ray/zipf.py: `sluice bench` speaks no Ray, whose model id travels in an HTTP header).
#
# Usage: N=10000 MAX_MODELS=1000 benches/many-models/ray.sh
# VENV: a virtualenv with ray[serve], scikit-learn and joblib (made here if missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-10000}
MAX_MODELS=${MAX_MODELS:-1000}
DURATION=${DURATION:-20}
CLIENTS=${CLIENTS:-16}
ZIPF=${ZIPF:-1.1}
PORT=${PORT:-18100}
VENV=${VENV:-$HOME/.cache/sluice-ci/ray-venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "ray[serve]==2.60.0" scikit-learn joblib
WORK=$(mktemp -d)
SERVER=
trap '[ -n "$SERVER" ] && kill -KILL -- "-$SERVER" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

"$VENV/bin/python" benches/compare/mlserver/train.py "$WORK/trained" >/dev/null
for i in $(seq "$N"); do
    mkdir -p "$WORK/models/m$i"
    ln "$WORK/trained/model.joblib" "$WORK/models/m$i/"
done
# Memory of every process of the session started below (driver, GCS, raylet, proxy, replica).
session_rss_mib() { ps -o rss= -s "$SERVER" | awk '{sum += $1} END {printf "%.0f", sum / 1024}'; }

began=$(date +%s.%N)
(cd benches/many-models/ray && MODEL_DIR="$WORK/models" MAX_MODELS=$MAX_MODELS PORT=$PORT \
    RAY_TMPDIR="$WORK/ray" exec setsid "$VENV/bin/python" app.py) >"$WORK/log" 2>&1 </dev/null &
SERVER=$!
for _ in $(seq 600); do
    kill -0 "$SERVER" 2>/dev/null || { tail -30 "$WORK/log" >&2; exit 1; }
    grep -q '^ready' "$WORK/log" && break
    sleep 0.5
done
grep -q '^ready' "$WORK/log" || { tail -30 "$WORK/log" >&2; exit 1; }
echo "Ray Serve: ready after $(awk -v a="$began" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s, RSS $(session_rss_mib) MiB (all its processes); $N models registered, at most $MAX_MODELS loaded"
echo "Zipf (exponent $ZIPF) over the $N models, ray/zipf.py, $CLIENTS clients, ${DURATION} s:"
"$VENV/bin/python" benches/many-models/ray/zipf.py "http://127.0.0.1:$PORT/" "$N" "$ZIPF" \
    "$CLIENTS" "$DURATION" | sed 's/^/  /'
echo "  at the end: RSS $(session_rss_mib) MiB"
