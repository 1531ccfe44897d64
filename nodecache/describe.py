"""``nodecache check``'s account of a configuration: per server block, where
it listens, its chain, each directive's support against CoreDNS (from the
plugin registry), and what the cache, forward and k8s_schema options in
effect do."""
from __future__ import annotations

from .observe.families import rcode_label
from .plugins.k8s_schema.shape import sample_walk
from .plugins.registry import PLUGINS


def describe(config) -> str:
    """Per block: where it listens, its chain, each directive's support
    (supported / supported with a difference / ignored, from the plugin
    registry) and the cache and forward options in effect."""
    labels = {"supported": "supported", "differs": "supported, differs", "ignored": "ignored (warning)"}
    lines = []
    for b in config.blocks:
        where = ", ".join(b.binds) or "all addresses"
        lines.append(f"{' '.join(b.zones)} port {b.port} on {where}  ({b.source})")
        chain = [name for name, _ in b.plugins if PLUGINS[name].stage is not None]
        lines.append("  chain: " + (" -> ".join(chain) or "(empty: REFUSED)"))
        for name, _ in b.plugins:
            plugin = PLUGINS[name]
            lines.append(f"  {name:12} {labels[plugin.support]}" + (f": {plugin.note}" if plugin.note else ""))
        c = b.option("cache")
        if c:
            lines.append(f"  cache: success {c.success.capacity} ttl {c.success.min_ttl}..{c.success.max_ttl}"
                         f", denial {c.denial.capacity} ttl {c.denial.min_ttl}..{c.denial.max_ttl}"
                         f", servfail {c.servfail_ttl:g}s"
                         + (f", prefetch {c.prefetch.amount}/{c.prefetch.duration:g}s/{c.prefetch.percentage}%"
                            if c.prefetch else "")
                         + (f", serve_stale {c.serve_stale.duration:g}s "
                            f"{'verify' if c.serve_stale.verify else 'immediate'}" if c.serve_stale else ""))
        lines += _schema_walk(b.option("k8s_schema"))
        for f in b.option("forward", ()):
            lines.append(_forward_line(f))
    return "\n".join(lines)


def _forward_line(f) -> str:
    """One ``forward`` directive as ``check`` prints it."""
    if all(u.encrypted for u in f.to):
        proto = "tls"
    else:
        proto = "tcp" if f.force_tcp else "udp (tcp on truncation)"
    tls = ", ".join(f"{u} verified as {f.server_name(u)}" for u in f.to if u.encrypted)
    return (f"  forward {f.from_zone} -> {', '.join(map(str, f.to))} over {proto}, "
            f"policy {f.policy}, expire {f.expire:g}s, max_fails {f.max_fails}"
            + (f", except {' '.join(f.except_zones)}" if f.except_zones else "")
            + (f", max_concurrent {f.max_concurrent}" if f.max_concurrent else "")
            + (f"; {tls}" if tls else "")
            + (f"; next {' '.join(map(rcode_label, f.next_rcodes))}" if f.next_rcodes else "")
            + ("; next_on_nodata" if f.next_on_nodata else "")
            + (f"; failover {' '.join(map(rcode_label, f.failover_rcodes))}" if f.failover_rcodes else "")
            + ("; failfast_all_unhealthy_upstreams" if f.failfast_all_unhealthy_upstreams else ""))


def _schema_walk(cfg) -> list[str]:
    """What k8s_schema does with a sample search walk (``describe``)."""
    if cfg is None:
        return []
    lines = [f"  k8s_schema {cfg.zone}: pods {cfg.pods}" + (f", except {' '.join(cfg.excepts)}" if cfg.excepts else "")
             + "; a pod in namespace default looking up api.github.com asks:"]
    lines += [f"    {query:42} {what}" for query, what in sample_walk(cfg.zone, cfg.pods)]
    return lines
