# HAProxy from Debian's packages, on the same base as the sluice image (deploy/image), for
# the multi-node test (deploy/cluster/test.sh).
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/*
COPY haproxy.cfg /etc/haproxy/haproxy.cfg
EXPOSE 8001
CMD ["haproxy", "-W", "-db", "-f", "/etc/haproxy/haproxy.cfg"]
