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


def read_kubedns_configmap(directory: str | Path) -> tuple[dict[str, list[str]], list[str], list[str]]:
    """(stubDomains, upstreamNameservers, problems) from a mounted kube-dns
    ConfigMap. A file that is not the JSON it should be raises
    ConfigMapError; a single bad value (a server that is a hostname, a
    domain that is not a DNS name) is left out and said in ``problems``,
    as node-cache does, so one bad entry never takes the node's DNS down."""
    d = Path(directory)
    stubs = _json_file(d / "stubDomains", dict)
    upstreams = _json_file(d / "upstreamNameservers", list)
    problems: list[str] = []
    good_stubs: dict[str, list[str]] = {}
    for domain, servers in stubs.items():
        why = _bad_domain(domain)
        if why is None and (not isinstance(servers, list) or not servers):
            why = "must map to a non-empty list of servers"
        if why is None:
            bad = [s for s in servers if _bad_server(s)]
            if bad:
                why = f"servers must be IP or IP:port, not {', '.join(map(repr, bad))}"
        if why is not None:
            problems.append(f"stubDomains[{domain!r}] ignored: {why}")
            continue
        good_stubs[domain] = servers
    good_upstreams = []
    for server in upstreams:
        if _bad_server(server):
            problems.append(f"upstreamNameservers entry {server!r} ignored: not IP or IP:port")
        else:
            good_upstreams.append(server)
    if upstreams and not good_upstreams:
        problems.append("no usable upstreamNameservers: using the node's resolv.conf")
    return good_stubs, good_upstreams, problems


# (fullmatch: ``$`` would also match before a final newline, and a key like
# "acme.local\n" would break the merged Corefile's line structure)
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _bad_domain(domain) -> str | None:
    if not isinstance(domain, str):
        return "not a string"
    labels = domain.rstrip(".").split(".")
    if not domain.rstrip(".") or len(domain.rstrip(".")) > 253 or not all(_LABEL.fullmatch(x) for x in labels):
        return "not a DNS name (letters, digits, '-', '_' in labels of 1-63; IDNA for others)"
    return None


def _bad_server(server) -> bool:
    if not isinstance(server, str):
        return True
    text = server.strip()
    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ("53" if not rest else "x")
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return not (port.isdigit() and 0 < int(port) < 65536)


def _json_file(path: Path, kind: type):
    try:
        text = path.read_text(encoding="utf-8")  # JSON is UTF-8 (RFC 8259 §8.1), whatever the locale
    except FileNotFoundError:
        return kind()
    except OSError as exc:
        raise ConfigMapError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigMapError(f"{path}: not UTF-8 text: {exc}") from exc
    if not text.strip():
        return kind()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigMapError(f"{path}: invalid JSON: {exc}") from exc
    except RecursionError:
        raise ConfigMapError(f"{path}: JSON nested too deeply") from None
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
