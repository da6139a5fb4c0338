# Redis from Debian's packages, on the same base as the sluice image, for the multi-node test
# (deploy/cluster/test.sh): the nodes' shared state, with the durability setting
# docs/deploy.md asks for (the append-only file fsync'd before every answer).
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data
USER redis
EXPOSE 6379
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--dir", "/data", \
     "--save", "", "--appendonly", "yes", "--appendfsync", "always", \
     "--maxmemory-policy", "volatile-ttl"]
