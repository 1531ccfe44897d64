"""Which names under a Kubernetes cluster zone the DNS schema can produce.

The Kubernetes DNS specification (kubernetes/dns, docs/specification.md)
fixes every name under ``<zone>``:

* ``svc.<zone>`` holds ``<ns>`` (an empty non-terminal), ``<svc>.<ns>``,
  ``<hostname>.<svc>.<ns>`` (a headless Service's endpoints),
  ``_<proto>.<svc>.<ns>`` (an empty non-terminal of the SRV names) and
  ``_<port>._<proto>.<svc>.<ns>``;
* ``pod.<zone>`` holds ``<a-b-c-d>.<ns>`` (CoreDNS's ``pods insecure`` or
  ``verified``; with ``pods disabled``, CoreDNS's default, every name
  below ``pod.<zone>`` is NXDOMAIN);
* ``dns-version.<zone>``;
* nothing else.

``judge`` reads a name's labels below the zone (left to right, lower
case) and says ``IMPOSSIBLE`` (no Kubernetes object can have this name: the
cluster DNS answers NXDOMAIN), or which ancestors to look at: a name under
``<svc>.<ns>.svc`` exists only if ``<ns>.svc.<zone>`` and
``<svc>.<ns>.svc.<zone>`` do, so an NXDOMAIN for either cuts it (RFC 8020).
The ancestors are given as label counts from the zone (2: ``<ns>.svc``,
3: ``<svc>.<ns>.svc``). A wildcard label (CoreDNS answers ``*`` queries)
and the shapes the schema allows are passed on. Pure, no I/O.
"""
from __future__ import annotations

IMPOSSIBLE = "schema"
NO_ANCESTORS: tuple[int, ...] = ()
_NS, _NS_SVC = (2,), (2, 3)


def judge(labels: list[bytes], pods: str) -> str | tuple[int, ...]:
    """``IMPOSSIBLE``, or the ancestors (label counts from the zone) whose
    denial also denies this name (``()``: none, pass it on)."""
    n = len(labels)
    if n == 0 or b"*" in labels:
        return NO_ANCESTORS
    top = labels[-1]
    below = n - 1  # labels below ``svc`` / ``pod``
    if top == b"svc":
        if below <= 1:
            return NO_ANCESTORS          # svc.<zone>, <ns>.svc.<zone>
        if below == 2:
            return _NS                   # <svc>.<ns>
        if below == 3:
            return _NS_SVC               # <hostname>.<svc>.<ns>, _<proto>.<svc>.<ns>
        if below == 4 and labels[0][:1] == b"_" and labels[1][:1] == b"_":
            return _NS_SVC               # _<port>._<proto>.<svc>.<ns>
        return IMPOSSIBLE
    if top == b"pod":
        if below == 0:
            return NO_ANCESTORS
        if pods == "disabled" or below > 2:
            return IMPOSSIBLE
        return NO_ANCESTORS              # <ns>.pod, <a-b-c-d>.<ns>.pod: the cluster DNS decides
    if n == 1 and top == b"dns-version":
        return NO_ANCESTORS
    return IMPOSSIBLE


def labels_below(name: bytes, zone: bytes) -> list[bytes] | None:
    """The labels of wire name ``name`` (lower case) below wire zone
    ``zone``, left to right; None when ``name`` is not at or below it."""
    if len(name) < len(zone) or not name.endswith(zone):
        return None
    out = []
    i, end = 0, len(name) - len(zone)
    while i < end:
        length = name[i]
        out.append(name[i + 1:i + 1 + length])
        i += length + 1
    return out if i == end else None


def suffix(name: bytes, labels: list[bytes], count: int) -> bytes:
    """The ancestor of ``name`` with ``count`` of its ``labels`` below the zone."""
    skip = sum(len(x) + 1 for x in labels[:len(labels) - count])
    return name[skip:]


def sample_walk(zone: str, pods: str, name: str = "api.github.com", ns: str = "default") -> list[tuple[str, str]]:
    """What the stage does with each query of a pod's ndots:5 walk for
    ``name`` from namespace ``ns`` (for ``nodecache check``)."""
    zone_wire = _wire(zone)
    out = []
    for query in (f"{name}.{ns}.svc.{zone}", f"{name}.svc.{zone}", f"{name}.{zone}"):
        judged = judge(labels_below(_wire(query), zone_wire), pods)
        if judged is IMPOSSIBLE:
            what = "NXDOMAIN at the node (schema)"
        elif judged:
            labels = query[:-len(zone)].rstrip(".").split(".")
            ancestors = " or ".join(".".join(labels[len(labels) - k:]) + "." + zone for k in judged)
            what = f"NXDOMAIN at the node once {ancestors} is denied (RFC 8020), else forwarded"
        else:
            what = "forwarded"
        out.append((query, what))
    out.append((f"{name}.", "not under the zone: another block (the node's search domains come before it)"))
    return out


def _wire(name: str) -> bytes:
    return b"".join(bytes([len(x)]) + x.encode() for x in name.lower().rstrip(".").split(".") if x) + b"\x00"
