"""The namespace's own addresses, from /proc listings (node.addresses)."""
from nodecache.node import addresses

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 169.254.20.10/32 ...
        |-- 169.254.20.10
           /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 127.0.0.1
        /32 host LOCAL
"""
IF_INET6 = """fe8000000000000000fc00fffe000001 04 40 20 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
fd000000000000000000000000000002 04 40 00 82     eth0
"""


def test_ipv4_addresses_are_the_host_local_routes():
    assert addresses.ipv4_local(FIB_TRIE) == {"127.0.0.1", "169.254.20.10"}  # not the /8, not broadcast


def test_ipv6_addresses_are_spelt_as_sockets_spell_them():
    assert addresses.ipv6_local(IF_INET6) == {"fe80::fc:ff:fe00:1", "::1", "fd00::2"}


def test_this_namespace_has_loopback():
    assert "127.0.0.1" in addresses.local_addresses()
