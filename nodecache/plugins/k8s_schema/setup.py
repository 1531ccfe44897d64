"""``k8s_schema [ZONE] { pods disabled|insecure|verified; except NAME...;
search DOMAIN...|none }`` -> ``SchemaConfig``. ZONE defaults to the
block's zone, which must then be one zone other than the root."""
from __future__ import annotations

from dataclasses import dataclass

from ...config.corefile import Directive
from ..grammar import Ctx, normalize_zone

PODS = ("disabled", "insecure", "verified")


@dataclass(frozen=True)
class SchemaConfig:
    zone: str                       # the cluster domain, with a trailing dot
    pods: str = "disabled"          # the cluster's CoreDNS ``kubernetes { pods ... }`` (CoreDNS's default)
    excepts: tuple[str, ...] = ()   # names the cluster's CoreDNS serves otherwise (rewrite, hosts, file)
    # the node's search domains, which a pod's walk tries after the cluster's;
    # None: those of /etc/resolv.conf, read when the stage is built; (): no walk ahead
    search: tuple[str, ...] | None = None


def setup(ctx: Ctx, d: Directive) -> SchemaConfig:
    if len(d.args) > 1:
        raise ctx.error(d.line, "k8s_schema [ZONE]")
    if d.args:
        zone = normalize_zone(ctx, d.args[0])
    elif len(ctx.zones) == 1 and ctx.zones[0] != ".":
        zone = ctx.zones[0]
    else:
        raise ctx.error(d.line, "k8s_schema: give the cluster zone (the block serves "
                                f"{' '.join(ctx.zones)}), e.g. k8s_schema cluster.local")
    if zone == ".":
        raise ctx.error(d.line, "k8s_schema: the zone cannot be the root")
    pods, excepts, search = "disabled", [], None
    for sub in d.body or ():
        if sub.name == "pods" and len(sub.args) == 1 and sub.args[0].text in PODS:
            pods = sub.args[0].text
        elif sub.name == "except" and sub.args:
            excepts += [normalize_zone(ctx, a) for a in sub.args]
        elif sub.name == "search" and sub.args:
            search = () if [a.text for a in sub.args] == ["none"] else tuple(normalize_zone(ctx, a) for a in sub.args)
        else:
            raise ctx.error(sub.line, f"k8s_schema: unknown option or wrong arguments '{sub.name}' "
                                      f"(pods {'|'.join(PODS)}; except NAME...; search DOMAIN...|none)")
    for name in excepts:
        if not (name == zone or name.endswith("." + zone)):
            raise ctx.error(d.line, f"k8s_schema: except {name} is not under {zone}")
    return SchemaConfig(zone, pods, tuple(excepts), search)
