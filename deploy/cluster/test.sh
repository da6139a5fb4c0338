#!/usr/bin/env bash
# Three sluice nodes from the image behind a real load balancer (HAProxy from Debian's
# packages, checking each node's readiness as a Kubernetes Service would), sharing their state
# through one Redis (from Debian's packages, append-only file fsync'd on every write), on
# private Docker networks (the nodes and the balancer on one, the nodes and Redis on another):
#   1. an application created through node A is served by B and C; feedback sent to B changes
#      what C selects;
#   2. node C cut off from Redis (`docker network disconnect`): it keeps answering
#      predictions, answers feedback with UNAVAILABLE, and catches up once reconnected;
#   3. Redis killed with SIGKILL and started again: no acknowledged feedback is lost;
#   4. under steady load from `sluice bench` through the balancer, a rolling restart of all
#      three nodes (SIGTERM: the drain, then start again): no request may fail, and the
#      application and its learned state are still there after;
#   5. `kill -9` of one node under load, feedback sent through the balancer meanwhile: only
#      requests in flight on it may fail (at most the load's concurrency), no acknowledged
#      feedback is lost; then, with it still dead, no request fails.
# Prints requests sent, answered and failed by cause, and the times to recover. Stops by
# itself; removes its containers and networks.
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
# The nodes' admin token: the CLI's calls come from the host, not from loopback.
export SLUICE_ADMIN_TOKEN=cluster-test
WORK=$(mktemp -d)
cleanup() {
    docker rm -f "$RUN-lb" "$RUN-redis" "${NODES[@]/#/$RUN-}" >/dev/null 2>&1 || true
    docker network rm "$RUN" "$RUN-state" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "cluster test: $*" >&2; for n in "${NODES[@]}"; do docker logs "$RUN-$n" 2>&1 | tail -5 >&2; done; exit 1; }

for part in haproxy redis; do
    docker build --quiet --build-arg "BASE=$BASE" --tag "sluice-$part:test" \
        -f "deploy/cluster/$part.Dockerfile" deploy/cluster >/dev/null
done
docker network create "$RUN" >/dev/null
docker network create --internal "$RUN-state" >/dev/null
docker run -d --name "$RUN-redis" --network "$RUN-state" --network-alias redis sluice-redis:test >/dev/null
for node in "${NODES[@]}"; do
    docker create --name "$RUN-$node" --network "$RUN" --network-alias "$node" \
        -p 127.0.0.1::8000 -p 127.0.0.1::8001 "$IMAGE" serve --listen 0.0.0.0:8001 \
        --http-listen 0.0.0.0:8000 --sample-replicas 1 --drain-delay-s 2 --drain-timeout-s 10 \
        --state redis://redis:6379/0 --admin-token "$SLUICE_ADMIN_TOKEN" >/dev/null
    docker network connect "$RUN-state" "$RUN-$node"
    docker start "$RUN-$node" >/dev/null
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

# The application and what it learns, node by node.
grpc() { echo "http://$(docker port "$RUN-$1" 8001/tcp | head -1)"; }
# The first digit of the data set (a 0), as the CLI's JSON.
INPUT=$(head -1 sample-models/data/digits.csv | awk -F, '{
    printf "{\"inputs\": [{\"name\": \"pixels\", \"datatype\": \"FP32\", \"shape\": [1, 64], \"data\": ["
    for (i = 1; i <= 64; i++) printf "%s%s", $i, (i < 64 ? "," : "")
    printf "]}]}" }')
predict() { "$SLUICE" apps predict shared --user alice --input "$INPUT" --server "$1" >/dev/null 2>"$WORK/predict.err"; }
feedback() { "$SLUICE" feedback shared --user alice --label 0 --input "$INPUT" --server "$1" >/dev/null 2>"$WORK/feedback.err"; }
learned() {  # learned SERVER: alice's feedback count as that server sees it
    "$SLUICE" apps state shared --user alice --server "$1" 2>/dev/null \
        | sed -n 's/.*: \([0-9]*\) feedback events/\1/p'
}
until_learned() {  # until_learned SERVER COUNT: waits (10 s at most) until it sees COUNT
    for _ in $(seq 200); do [ "$(learned "$1")" = "$2" ] && return 0; sleep 0.05; done
    fail "$1 sees $(learned "$1") feedback events, not $2"
}
now() { date +%s.%N; }
since() { python3 -c "import sys; print('%.2f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$(now)"; }

echo "==> an application created through node-a, served by node-b and node-c, taught through node-b"
"$SLUICE" apps create shared --server "$(grpc node-a)" --models digits-logreg,digits-mlp \
    --policy exp4 --slo-ms 1000 >/dev/null
for node in node-b node-c; do
    for _ in $(seq 100); do predict "$(grpc "$node")" && break; sleep 0.05; done
    predict "$(grpc "$node")" || fail "$node does not serve the application: $(cat "$WORK/predict.err")"
done
for _ in 1 2 3 4 5; do feedback "$(grpc node-b)" || fail "feedback: $(cat "$WORK/feedback.err")"; done
until_learned "$(grpc node-c)" 5
echo "node-c selects with the 5 feedback events node-b took"

echo "==> node-c cut off from Redis"
docker network disconnect "$RUN-state" "$RUN-node-c"
predict "$(grpc node-c)" || fail "node-c stopped answering predictions: $(cat "$WORK/predict.err")"
started=$(now)
feedback "$(grpc node-c)" && fail "node-c acknowledged feedback it could not store"
grep -qi "unavailable" "$WORK/feedback.err" || fail "feedback refused without UNAVAILABLE: $(cat "$WORK/feedback.err")"
echo "node-c answers predictions, refuses feedback with UNAVAILABLE after $(since "$started") s"
for _ in 1 2 3; do feedback "$(grpc node-b)" || fail "feedback: $(cat "$WORK/feedback.err")"; done
docker network connect "$RUN-state" "$RUN-node-c"
started=$(now)
until_learned "$(grpc node-c)" 8
echo "node-c caught up with the 3 taken meanwhile $(since "$started") s after reconnecting"
feedback "$(grpc node-c)" || fail "node-c refuses feedback once reconnected: $(cat "$WORK/feedback.err")"
until_learned "$(grpc node-a)" 9

echo "==> Redis killed with SIGKILL, then started again"
docker kill --signal KILL "$RUN-redis" >/dev/null
docker start "$RUN-redis" >/dev/null
started=$(now)
for _ in $(seq 200); do feedback "$(grpc node-a)" && break; sleep 0.05; done
feedback_ok=$(since "$started")
until_learned "$(grpc node-b)" 10
echo "feedback acknowledged again $feedback_ok s after Redis restarted; all 9 acknowledged before the kill kept"

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
until_learned "$(grpc node-c)" 10
echo "after the rolling restart every node serves the application with its 10 feedback events"

echo "==> kill -9 of one node under load"
load killed 12
LOAD=$!
# Feedback through the balancer meanwhile, one at a time: acknowledged ones must all count.
( acked=0 refused=0; end=$(( $(date +%s) + 10 ))
  while [ "$(date +%s)" -lt "$end" ]; do
      if feedback "http://$LB"; then acked=$((acked + 1)); else refused=$((refused + 1)); fi
  done
  echo "$acked $refused" > "$WORK/feedback.counts" ) &
FEEDBACK=$!
sleep 4
docker kill --signal KILL "$RUN-node-b" >/dev/null
finish killed "kill -9"
[ "$(count killed failed)" -le "$CONCURRENCY" ] \
    || fail "more requests failed than were in flight on the killed node ($CONCURRENCY at most)"
wait "$FEEDBACK"
read -r acked refused < "$WORK/feedback.counts"
total=$(learned "$(grpc node-a)")
echo "feedback during the kill: $acked acknowledged, $refused refused; node-a counts $((total - 10))"
# A feedback whose answer the kill cut off may have been stored: at most one per refusal.
[ "$total" -ge $((10 + acked)) ] || fail "acknowledged feedback was lost: $total < 10 + $acked"
[ "$total" -le $((10 + acked + refused)) ] || fail "more feedback counted than was sent"
# With node-b still dead, the balancer sends everything to the other two.
load after 5
LOAD=$!
finish after "after the kill, node-b still down"
[ "$(count after failed)" = 0 ] || fail "requests failed with the dead node out of the rotation"
[ "$(count after ok)" -gt 0 ] || fail "nothing was answered"
echo "cluster test: passed"
