"""node.events: which netlink notifications start a reconcile (pure parsers
over the bytes of one recv; messages built as the kernel lays them out)."""
import socket
import struct

from nodecache.node import events


def _attr(atype: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), atype) + value
    return raw + b"\0" * (-len(raw) % 4)


def _msg(mtype: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), mtype, 0, 0, 0) + body


def _dellink(name: str) -> bytes:
    ifinfo = struct.pack("=BxHiII", socket.AF_UNSPEC, 1, 7, 0, 0)
    return _msg(events.RTM_DELLINK, ifinfo + _attr(events.IFLA_IFNAME, name.encode() + b"\0"))


def _deladdr(addr: str) -> bytes:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    ifa = struct.pack("=BBBBI", family, 128 if ":" in addr else 32, 0, 0, 7)
    return _msg(events.RTM_DELADDR, ifa + _attr(events.IFA_ADDRESS, socket.inet_pton(family, addr)))


def _nft(msg: int, *attrs: tuple[int, str]) -> bytes:
    body = struct.pack("=BBH", socket.AF_INET, 0, 0) + b"".join(_attr(t, v.encode() + b"\0") for t, v in attrs)
    return _msg((events.NFNL_SUBSYS_NFTABLES << 8) | msg, body)


IPS = frozenset({"169.254.20.10", "fd00::10"})


def test_our_interface_or_address_deleted_is_a_removal():
    assert events.route_removal(_dellink("nodelocaldns"), "nodelocaldns", IPS) == "interface nodelocaldns deleted"
    assert events.route_removal(_deladdr("fd00::10"), "nodelocaldns", IPS) == "address fd00::10 deleted"
    # several messages in one datagram: the one that matters is found
    both = _deladdr("169.254.1.1") + _deladdr("169.254.20.10")
    assert events.route_removal(both, "nodelocaldns", IPS) == "address 169.254.20.10 deleted"


def test_other_links_and_addresses_are_not():
    assert events.route_removal(_dellink("veth0"), "nodelocaldns", IPS) is None
    assert events.route_removal(_deladdr("169.254.20.11"), "nodelocaldns", IPS) is None
    new_link = _dellink("nodelocaldns").replace(struct.pack("=H", events.RTM_DELLINK), struct.pack("=H", 16), 1)
    assert events.route_removal(new_link, "nodelocaldns", IPS) is None  # RTM_NEWLINK: our own repair


def test_deletions_where_our_rules_live_are_removals():
    rule = _nft(events.NFT_MSG_DELRULE, (1, "raw"), (2, "PREROUTING"))
    assert events.netfilter_removal(rule) == "a rule deleted in raw PREROUTING"
    assert events.netfilter_removal(_nft(events.NFT_MSG_DELTABLE, (1, "nodecache"))) == "a table deleted in nodecache"
    assert events.netfilter_removal(_nft(events.NFT_MSG_DELCHAIN, (1, "filter"), (3, "INPUT")))


def test_kube_proxy_rewriting_its_own_chains_is_not():
    assert events.netfilter_removal(_nft(events.NFT_MSG_DELRULE, (1, "nat"), (2, "KUBE-SERVICES"))) is None
    assert events.netfilter_removal(_nft(events.NFT_MSG_DELRULE, (1, "kube-proxy"), (2, "services"))) is None
    assert events.netfilter_removal(_nft(events.NFT_MSG_DELTABLE, (1, "kube-proxy"))) is None
    newrule = _nft(6, (1, "raw"), (2, "PREROUTING"))  # NFT_MSG_NEWRULE: our own repair
    assert events.netfilter_removal(newrule) is None


def test_truncated_or_garbled_datagrams_are_ignored():
    whole = _dellink("nodelocaldns")
    for cut in range(len(whole)):
        assert events.route_removal(whole[:cut], "nodelocaldns", IPS) is None
    assert events.netfilter_removal(b"\xff" * 40) is None
    assert events.netfilter_removal(struct.pack("=IHHII", 3, 0, 0, 0, 0)) is None  # length below a header


def test_an_address_message_whose_family_and_length_disagree_leaves_the_rest_read():
    """An IPv4 message with 16 bytes of address (or IPv6 with 4) raised
    ValueError and the rest of the datagram was lost: our removal after it
    went unnoticed until the next reconcile."""
    ifa4 = struct.pack("=BBBBI", socket.AF_INET, 32, 0, 0, 1)
    ifa6 = struct.pack("=BBBBI", socket.AF_INET6, 128, 0, 0, 1)
    odd = (_msg(events.RTM_DELADDR, ifa4 + _attr(events.IFA_ADDRESS, bytes(16)))
           + _msg(events.RTM_DELADDR, ifa6 + _attr(events.IFA_ADDRESS, bytes(4))))
    ours = _deladdr("169.254.20.10")
    assert events.route_removal(odd + ours, "nodelocaldns", frozenset({"169.254.20.10"})) == \
        "address 169.254.20.10 deleted"
