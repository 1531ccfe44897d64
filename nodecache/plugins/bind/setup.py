"""``bind ADDRESS...`` -> the addresses a server block listens on (normalised)."""
from __future__ import annotations

import ipaddress

from ...config.corefile import Directive
from ..grammar import Ctx, no_body


def setup(ctx: Ctx, d: Directive) -> tuple[str, ...]:
    no_body(ctx, d)
    if not d.args:
        raise ctx.error(d.line, "bind: needs at least one address")
    out = []
    for tok in d.args:
        try:
            out.append(str(ipaddress.ip_address(tok.text.strip("[]"))))
        except ValueError:
            raise ctx.error(tok.line, f"bind: {tok.text!r} is not an IP address") from None
    return tuple(dict.fromkeys(out))
