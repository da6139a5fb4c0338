#!/usr/bin/env bash
# Runs the image as Kubernetes runs it (deploy/kubernetes/base: uid 10001, read-only root
# filesystem, every capability dropped, no privilege escalation, writable emptyDirs for the
# caches, the store and /tmp) and checks what the manifests rely on: it serves the bundled
# models over KServe REST and gRPC's port, exports the autoscaling gauges, and on SIGTERM says
# not ready at once, keeps serving through --drain-delay-s, then exits 0.
#
#   deploy/image/test.sh [IMAGE]          (default sluice:<the crate's version>)
set -euo pipefail
# (No `grep -q` after a pipe: it exits at the first match, the writer gets SIGPIPE, and
# pipefail takes that for a failure.)
cd "$(dirname "$0")/../.."
IMAGE=${1:-sluice:$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}
NAME=sluice-image-test-$$
trap 'docker rm -f "$NAME" >/dev/null 2>&1 || true' EXIT
docker run -d --name "$NAME" --user 10001:10001 --read-only --cap-drop ALL \
    --security-opt no-new-privileges \
    --tmpfs /var/cache/sluice:uid=10001 --tmpfs /var/lib/sluice:uid=10001 --tmpfs /tmp \
    -p 127.0.0.1::8000 -p 127.0.0.1::8001 "$IMAGE" \
    serve --listen 0.0.0.0:8001 --http-listen 0.0.0.0:8000 --drain-delay-s 3 >/dev/null
HTTP=$(docker port "$NAME" 8000/tcp | head -1)
fail() { echo "image test: $*" >&2; docker logs "$NAME" 2>&1 | tail -20 >&2; exit 1; }
ready() { curl -s -o /dev/null -w '%{http_code}' "http://$HTTP/v2/health/ready" || true; }
for _ in $(seq 300); do [ "$(ready)" = 200 ] && break; sleep 0.2; done
[ "$(ready)" = 200 ] || fail "not ready after 60 s"
PIXELS=$(sed -n 2p sample-models/data/digits.csv | cut -d, -f1-64)
infer() {
    curl -sf -X POST "http://$HTTP/v2/models/digits-logreg/infer" \
        -d "{\"inputs\":[{\"name\":\"pixels\",\"datatype\":\"FP32\",\"shape\":[1,64],\"data\":[$PIXELS]}],\"outputs\":[{\"name\":\"label\"}]}"
}
infer | grep '"name":"label"' >/dev/null || fail "no label from digits-logreg"
curl -sf "http://$HTTP/metrics" | grep '^sluice_in_flight_requests{model="digits-logreg"' >/dev/null \
    || fail "no sluice_in_flight_requests gauge"
[ "$(docker exec "$NAME" id -u)" = 10001 ] || fail "not running as uid 10001"
# An image built with --onnxruntime runs graphs natively, with no flag.
if docker exec "$NAME" test -f /usr/local/lib/sluice/libonnxruntime.so; then
    docker logs "$NAME" 2>&1 | grep "graphs run natively on ONNX Runtime" >/dev/null \
        || fail "the image carries ONNX Runtime but serve did not open it"
    echo "image test: native graphs on the ONNX Runtime the image carries"
fi
echo "image test: $IMAGE serves as uid 10001 on a read-only root with no capabilities"

docker kill --signal TERM "$NAME" >/dev/null
sleep 0.5
[ "$(ready)" = 400 ] || fail "still ready after SIGTERM"
infer >/dev/null || fail "a request during the drain delay failed"
echo "image test: on SIGTERM, not ready at once and still serving"
STATUS=$(timeout 30 docker wait "$NAME") || fail "did not exit within 30 s of SIGTERM"
[ "$STATUS" = 0 ] || fail "exited with $STATUS after SIGTERM"
echo "image test: drained and exited 0"
