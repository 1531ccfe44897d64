# nodecache node agent image.
# It must run as root inside the container: netlink (interface, addresses)
# and iptables need CAP_NET_ADMIN, which the DaemonSet grants without
# `privileged`; every other capability is dropped there.
FROM python:3.11-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables iproute2 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY nodecache ./nodecache
COPY bench ./bench
RUN pip install --no-cache-dir . && rm -rf /src

WORKDIR /
ENTRYPOINT ["nodecache", "run"]
CMD ["-localip", "169.254.20.10", "-conf", "/etc/Corefile", "-upstreamsvc", "kube-dns-upstream"]
