"""node-cache's Corefile templating, so its ConfigMaps work unchanged.

The DaemonSet mounts a template (``-basecorefile``, default
/etc/coredns/Corefile.base) holding placeholders that the agent fills:

* ``__PILLAR__CLUSTER__DNS__``: the ClusterIP of ``-upstreamsvc``, read from
  the ``<NAME>_SERVICE_HOST`` environment variable Kubernetes sets (name
  upper-cased, ``-`` -> ``_``);
* ``__PILLAR__UPSTREAM__SERVERS__``: the kube-dns ConfigMap's
  ``upstreamNameservers`` (and then a ``force_tcp`` block for them becomes
  plain UDP, as node-cache does), else ``/etc/resolv.conf``;
* ``__PILLAR__LOCAL__DNS__``: the ``-localip`` addresses; a leftover
  ``__PILLAR__DNS__SERVER__`` is blanked.

Each ``stubDomains`` entry of the kube-dns ConfigMap becomes a server
block forwarding that domain to its servers. All of this is pure text
work; the caller parses the result like any Corefile.
"""
from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

CLUSTER_DNS = "__PILLAR__CLUSTER__DNS__"
UPSTREAM_SERVERS = "__PILLAR__UPSTREAM__SERVERS__"
LOCAL_DNS = "__PILLAR__LOCAL__DNS__"
DNS_SERVER = "__PILLAR__DNS__SERVER__"
DEFAULT_RESOLV = "/etc/resolv.conf"
_TCP_UPSTREAM = re.compile(r"forward\s+\.\s+" + UPSTREAM_SERVERS + r"\s*\{\s*force_tcp\s*\}")
STUB_BLOCK = """
{domain}:{port} {{
    errors
    cache 30
    bind {binds}
    forward . {servers}
}}
"""


class ConfigMapError(ValueError):
    pass


def service_env(name: str) -> str:
    return name.upper().replace("-", "_") + "_SERVICE_HOST"


def cluster_dns_ip(service: str, env: dict[str, str]) -> str | None:
    value = env.get(service_env(service), "").strip()
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def read_kubedns_configmap(directory: str | Path) -> tuple[dict[str, list[str]], list[str]]:
    """(stubDomains, upstreamNameservers) from a mounted kube-dns ConfigMap."""
    d = Path(directory)
    stubs = _json_file(d / "stubDomains", dict)
    upstreams = _json_file(d / "upstreamNameservers", list)
    for domain, servers in stubs.items():
        if not isinstance(servers, list) or not servers or not all(isinstance(s, str) for s in servers):
            raise ConfigMapError(f"stubDomains[{domain!r}] must be a non-empty list of servers")
    if not all(isinstance(s, str) for s in upstreams):
        raise ConfigMapError("upstreamNameservers must be a list of strings")
    return stubs, upstreams


def _json_file(path: Path, kind: type):
    try:
        text = path.read_text()
    except FileNotFoundError:
        return kind()
    except OSError as exc:
        raise ConfigMapError(f"cannot read {path}: {exc.strerror}") from exc
    if not text.strip():
        return kind()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigMapError(f"{path}: invalid JSON: {exc}") from exc
    if not isinstance(value, kind):
        raise ConfigMapError(f"{path}: expected a JSON {kind.__name__}")
    return value


def render_corefile(base: str, local_ips: list[str], cluster_dns: str | None,
                    stubs: dict[str, list[str]], upstreams: list[str], port: int = 53) -> str:
    text = base
    if upstreams:
        servers = " ".join(upstreams)
        # custom upstreams are plain DNS servers: UDP, as node-cache does
        text = _TCP_UPSTREAM.sub(f"forward . {servers}", text)
        text = text.replace(UPSTREAM_SERVERS, servers)
    else:
        text = text.replace(UPSTREAM_SERVERS, DEFAULT_RESOLV)
    if cluster_dns:
        text = text.replace(CLUSTER_DNS, cluster_dns)
    text = text.replace(LOCAL_DNS, " ".join(local_ips)).replace(DNS_SERVER, "")
    for domain in sorted(stubs):
        text += STUB_BLOCK.format(domain=domain, port=port, binds=" ".join(local_ips),
                                  servers=" ".join(stubs[domain]))
    return text
