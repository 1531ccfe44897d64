"""``loadbalance [round_robin]`` -> the policy name (CoreDNS's default)."""
from __future__ import annotations

from ...config.corefile import Directive
from ..grammar import Ctx

POLICIES = ("round_robin",)


def setup(ctx: Ctx, d: Directive) -> str:
    policy = d.args[0].text if d.args else "round_robin"
    if policy not in POLICIES:  # CoreDNS's `weighted FILE` and `prefer`
        raise ctx.error(d.line, f"loadbalance: policy {policy!r} is not supported (only round_robin)")
    if len(d.args) > 1:
        raise ctx.error(d.line, "loadbalance [round_robin]")
    for sub in d.body or ():
        raise ctx.error(sub.line, f"loadbalance: option '{sub.name}' is not supported")
    return policy
