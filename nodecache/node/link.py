"""The link-local interface: ensure it exists, is up and holds every local IP.

``ensure_interface`` is idempotent and is called by the reconcile loop:
it creates the interface if missing, adds any missing address (/32 IPv4,
/128 IPv6, added with IFA_F_NODAD so IPv6 is usable at once instead of
after duplicate address detection), and sets it up. It reports what it
changed; it never removes addresses someone else added.

The interface kind is ``dummy`` (what node-cache uses). Some kernels are
built without the dummy driver (this project's CI machine among them): the
kernel answers EOPNOTSUPP, and we fall back to a ``bridge`` with no ports,
which also holds addresses and answers locally, logging once why. An
existing interface of another kind is used as it is, with a warning, since
deleting an interface we did not create could cut the node off.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import importlib.util
import sys
import types
from dataclasses import dataclass, field


_NETLINK: tuple = ()


def _netlink():
    """pyroute2's IPRoute and NetlinkError, imported on first use (an agent
    that sets up no interface, under systemd or in a bench, never pays for
    them), and without the package's ``__init__``: that imports every
    pyroute2 subsystem (NDB, IPDB, conntrack, nftables, the asyncio
    sources), 9.5 MiB resident on top of the agent's own imports, where
    IPRoute alone, the only one we use, costs 4.1 MiB. Python runs a
    package's ``__init__`` before any submodule, so the package is
    registered first as an empty module with the same search path; if the
    submodules cannot be imported so (another pyroute2 layout), or someone
    imported the package already, the plain import is used."""
    global _NETLINK
    if not _NETLINK:
        _NETLINK = _iproute_alone() or _iproute_plain()
    return _NETLINK


def _iproute_alone() -> tuple:
    if "pyroute2" in sys.modules:
        return ()
    spec = importlib.util.find_spec("pyroute2")
    package = types.ModuleType("pyroute2")
    package.__path__, package.__spec__ = list(spec.submodule_search_locations), spec
    sys.modules["pyroute2"] = package
    try:
        from pyroute2.iproute.linux import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError
        return IPRoute, NetlinkError
    except (ImportError, AttributeError):
        for name in [m for m in sys.modules if m == "pyroute2" or m.startswith("pyroute2.")]:
            del sys.modules[name]
        return ()


def _iproute_plain() -> tuple:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
    return IPRoute, NetlinkError

log = logging.getLogger("nodecache.node")
IFA_F_NODAD = 0x02
OUR_KINDS = ("dummy", "bridge")


class LinkError(Exception):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind  # interface_add | interface_check (node-cache's error types)


@dataclass
class LinkReport:
    created: str | None = None          # kind created, if any
    added: list[str] = field(default_factory=list)
    kind: str = ""
    set_up: bool = False


def _kind(link) -> str:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info else ""


def _create(ipr, name: str) -> str:
    _, NetlinkError = _netlink()
    try:
        ipr.link("add", ifname=name, kind="dummy")
        return "dummy"
    except NetlinkError as exc:
        if exc.code not in (errno.EOPNOTSUPP, errno.ENODEV, errno.EINVAL):
            raise LinkError("interface_add", f"cannot create dummy interface {name}: {exc}") from exc
        log.warning("kernel has no dummy interface support (%s); using a bridge with no "
                    "ports as %s instead", exc.args[-1] if exc.args else exc, name)
    try:
        ipr.link("add", ifname=name, kind="bridge")
    except NetlinkError as exc:
        raise LinkError("interface_add", f"cannot create bridge interface {name}: {exc}") from exc
    return "bridge"


def ensure_interface(name: str, ips: list[str]) -> LinkReport:
    IPRoute, NetlinkError = _netlink()
    report = LinkReport()
    with IPRoute() as ipr:
        try:
            found = ipr.link_lookup(ifname=name)
            if not found:
                report.created = _create(ipr, name)
                found = ipr.link_lookup(ifname=name)
            index = found[0]
            link = ipr.get_links(index)[0]
            report.kind = _kind(link) or "unknown"
            if report.kind not in OUR_KINDS:
                log.warning("interface %s exists with kind %r; using it as it is", name, report.kind)
            have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=index)}
            for ip in ips:
                addr = ipaddress.ip_address(ip)
                prefix = 32 if addr.version == 4 else 128
                if (str(addr), prefix) in have:
                    continue
                try:
                    ipr.addr("add", index=index, address=str(addr), prefixlen=prefix,
                             IFA_FLAGS=IFA_F_NODAD)
                except NetlinkError as exc:
                    if exc.code != errno.EEXIST:  # same address with another prefix: fine
                        raise LinkError("interface_add", f"cannot add {ip} to {name}: {exc}") from exc
                report.added.append(ip)
            if link["flags"] & 1 == 0:  # IFF_UP
                ipr.link("set", index=index, state="up")
                report.set_up = True
        except NetlinkError as exc:
            raise LinkError("interface_check", f"checking interface {name}: {exc}") from exc
    return report


def remove_interface(name: str) -> bool:
    """Delete the interface if it exists and is of a kind we create."""
    IPRoute, _ = _netlink()
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return False
        kind = _kind(ipr.get_links(found[0])[0])
        if kind not in OUR_KINDS:
            log.warning("not removing interface %s of kind %r: we did not create it", name, kind)
            return False
        ipr.link("del", index=found[0])
        return True


def remove_addresses(name: str, ips: list[str]) -> list[str]:
    """Delete these addresses from the interface (those it still has); the
    ones deleted. For undoing what a start that failed had added."""
    IPRoute, NetlinkError = _netlink()
    removed = []
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return removed
        for ip in ips:
            addr = ipaddress.ip_address(ip)
            try:
                ipr.addr("del", index=found[0], address=str(addr), prefixlen=32 if addr.version == 4 else 128)
            except NetlinkError as exc:
                if exc.code != errno.EADDRNOTAVAIL:
                    raise LinkError("interface_check", f"cannot remove {ip} from {name}: {exc}") from exc
                continue
            removed.append(ip)
    return removed
