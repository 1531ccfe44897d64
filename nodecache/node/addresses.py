"""The addresses of this network namespace, read from /proc.

Admission (``server.admission``) needs them to tell host-network clients
(their queries come from one of these) from pods. /proc answers for the
namespace the process runs in, costs no netlink socket and loads nothing
(pyroute2 costs 4 MiB of resident memory even imported as ``node.link`` does):
``/proc/net/fib_trie`` lists every IPv4 address as a ``/32 host LOCAL``
route, ``/proc/net/if_inet6`` every IPv6 address.
"""
from __future__ import annotations

import ipaddress

FIB_TRIE, IF_INET6 = "/proc/net/fib_trie", "/proc/net/if_inet6"


def ipv4_local(fib_trie: str) -> set[str]:
    """Addresses of the ``/32 host LOCAL`` entries of a fib_trie listing."""
    out, last = set(), None
    for line in fib_trie.splitlines():
        text = line.strip()
        if text.startswith("|-- "):
            last = text[4:]
        elif text.startswith("/32 host LOCAL") and last is not None:
            out.add(last)
    return out


def ipv6_local(if_inet6: str) -> set[str]:
    """Addresses of an if_inet6 listing (32 hex digits first on each line)."""
    out = set()
    for line in if_inet6.splitlines():
        fields = line.split()
        if fields and len(fields[0]) == 32:
            out.add(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
    return out


def local_addresses() -> frozenset[str]:
    """Every address of this namespace, as socket addresses spell them.
    Raises OSError when /proc cannot be read."""
    with open(FIB_TRIE) as fh:
        found = ipv4_local(fh.read())
    try:
        with open(IF_INET6) as fh:
            found |= ipv6_local(fh.read())
    except FileNotFoundError:  # a kernel without IPv6
        pass
    return frozenset(found)
