#!/usr/bin/env bash
# Three sluice nodes from the image behind a real load balancer (HAProxy from Debian's
# packages, checking each node's readiness as a Kubernetes Service would), on a private Docker
# network, under steady load from `sluice bench` through the balancer:
#   1. a rolling restart of all three nodes (SIGTERM: the drain, then start again): no request
#      may fail;
#   2. `kill -9` of one node: only requests in flight on it may fail (at most the load's
#      concurrency); then, with it still dead, no request fails: the balancer routes around it.
# Prints requests sent, answered and failed by cause for each. Stops by itself; removes its
# containers and network.
#
#   deploy/cluster/test.sh IMAGE SLUICE      (SLUICE: the binary that drives the load)
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=${1:?usage: test.sh IMAGE SLUICE}
SLUICE=${2:?usage: test.sh IMAGE SLUICE}
BASE=${BASE:-sluice-base:bookworm}
RUN=sluice-cluster-$$
NODES=(node-a node-b node-c)
CONCURRENCY=8
WORK=$(mktemp -d)
cleanup() {
    docker rm -f "$RUN-lb" "${NODES[@]/#/$RUN-}" >/dev/null 2>&1 || true
    docker network rm "$RUN" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "cluster test: $*" >&2; for n in "${NODES[@]}"; do docker logs "$RUN-$n" 2>&1 | tail -5 >&2; done; exit 1; }

docker build --quiet --build-arg "BASE=$BASE" --tag sluice-haproxy:test \
    -f deploy/cluster/haproxy.Dockerfile deploy/cluster >/dev/null
docker network create "$RUN" >/dev/null
for node in "${NODES[@]}"; do
    docker run -d --name "$RUN-$node" --network "$RUN" --network-alias "$node" \
        -p 127.0.0.1::8000 "$IMAGE" serve --listen 0.0.0.0:8001 --http-listen 0.0.0.0:8000 \
        --sample-replicas 1 --drain-delay-s 2 --drain-timeout-s 10 >/dev/null
done
ready() {  # ready NODE: its readiness, from the host
    local port; port=$(docker port "$RUN-$1" 8000/tcp 2>/dev/null | head -1) || return 1
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$port/v2/health/ready")" = 200 ]
}
wait_ready() {
    for _ in $(seq 300); do ready "$1" && return 0; sleep 0.2; done
    fail "$1 not ready after 60 s"
}
for node in "${NODES[@]}"; do wait_ready "$node"; done
docker run -d --name "$RUN-lb" --network "$RUN" -p 127.0.0.1::8001 sluice-haproxy:test >/dev/null
LB=$(docker port "$RUN-lb" 8001/tcp | head -1)
for _ in $(seq 100); do
    "$SLUICE" models --server "http://$LB" >/dev/null 2>&1 && break
    sleep 0.2
done
# Every node up in the balancer (rise: two checks 500 ms apart).
sleep 2

# Closed-loop load through the balancer, in the background: load NAME SECONDS. Each request
# may take 5 s (the model's own 100 ms SLO would be its deadline otherwise): what is tested is
# that none is lost, and on 2 cores shared by three nodes, the balancer and the load, a slow
# answer is not a lost one (CI once had 6 of 35 064 past 100 ms during a restart).
load() {
    "$SLUICE" bench digits-logreg --server "http://$LB" --concurrency "$CONCURRENCY" \
        --connections 2 --timeout-ms 5000 --duration "$2" --json "$WORK/$1.json" \
        >"$WORK/$1.log" 2>&1 &
}
# What one load run did: summary NAME prints "sent N, answered N, failed N {by cause}";
# count NAME FIELD prints one figure (sent, ok or failed).
count() {
    python3 - "$WORK/$1.json" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r["failed"] = sum(r["errors"].values())
print(r[sys.argv[2]])
PY
}
summary() {
    python3 - "$WORK/$1.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("sent %d, answered %d, failed %d %s" % (r["sent"], r["ok"], sum(r["errors"].values()), r["errors"] or ""))
PY
}
# Waits for the load started last and prints what it did: finish NAME LABEL.
finish() {
    wait "$LOAD" || fail "the load generator failed: $(tail -3 "$WORK/$1.log")"
    local result
    result=$(summary "$1")
    echo "$2: $result"
}

echo "==> rolling restart of the three nodes under load"
load rolling 60
LOAD=$!
sleep 3
started=$(date +%s)
for node in "${NODES[@]}"; do
    docker stop --time 20 "$RUN-$node" >/dev/null   # SIGTERM: the drain
    docker start "$RUN-$node" >/dev/null
    wait_ready "$node"
    sleep 2                                         # back in the balancer's rotation
done
echo "restarted all three in $(( $(date +%s) - started )) s"
finish rolling "rolling restart"
[ "$(count rolling failed)" = 0 ] || fail "requests failed during the rolling restart"
[ "$(count rolling ok)" -gt 0 ] || fail "nothing was answered"

echo "==> kill -9 of one node under load"
load killed 12
LOAD=$!
sleep 4
docker kill --signal KILL "$RUN-node-b" >/dev/null
finish killed "kill -9"
[ "$(count killed failed)" -le "$CONCURRENCY" ] \
    || fail "more requests failed than were in flight on the killed node ($CONCURRENCY at most)"
# With node-b still dead, the balancer sends everything to the other two.
load after 5
LOAD=$!
finish after "after the kill, node-b still down"
[ "$(count after failed)" = 0 ] || fail "requests failed with the dead node out of the rotation"
[ "$(count after ok)" -gt 0 ] || fail "nothing was answered"
echo "cluster test: passed"
