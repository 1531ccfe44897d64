"""server.admission: the global cap, the per-client share, the per-client
rate (a token bucket on an injected clock) and the host-network aggregate,
each refusal counted by its reason."""
from nodecache.server.admission import LOCAL_SHARES, MAX_BUCKETS, Admission
from nodecache_lab.fakes import FakeClock


def test_a_client_holds_at_most_its_share_and_others_still_get_in():
    a = Admission(total=10, per_client=3, rate=0)
    assert [a.admit("10.0.0.1") for _ in range(4)] == [True, True, True, False]
    assert a.refused_share == 1 and a.admit("10.0.0.2")          # another client is not affected
    a.release("10.0.0.1")
    assert a.admit("10.0.0.1")                                     # a finished query frees a slot
    assert a.running == 4 and a.by_client == {"10.0.0.1": 3, "10.0.0.2": 1}


def test_the_total_caps_every_client_together():
    a = Admission(total=4, per_client=4, rate=0)
    admitted = [a.admit(f"10.0.0.{i}") for i in range(6)]
    assert admitted == [True] * 4 + [False] * 2 and a.refused_capacity == 2
    for i in range(4):
        a.release(f"10.0.0.{i}")
    assert a.running == 0 and a.by_client == {}                  # nothing left behind


def test_the_rate_is_a_token_bucket_with_a_seconds_burst():
    clock = FakeClock()
    a = Admission(total=1000, per_client=1000, rate=10, clock=clock)
    got = [a.admit("c") for _ in range(12)]
    assert got.count(True) == 10 and a.refused_rate == 2           # a second's worth at once
    for _ in range(10):
        a.release("c")
    clock.advance(0.35)
    assert [a.admit("c") for _ in range(4)] == [True, True, True, False]  # 3.5 tokens came back
    clock.advance(100)
    assert sum(a.admit("c") for _ in range(20)) == 10              # never more than the burst


def test_rate_zero_means_no_rate_limit():
    a = Admission(total=100000, per_client=100000, rate=0)
    assert all(a.admit("c") for _ in range(50000)) and a.refused_rate == 0


def test_host_network_clients_count_per_socket_but_share_one_aggregate():
    a = Admission(total=10000, per_client=2, rate=0)
    a.local = frozenset({"192.168.1.5"})
    assert a.client(("192.168.1.5", 40000)) == ("192.168.1.5", 40000)   # a socket on the node
    assert a.client(("10.244.0.7", 40000)) == "10.244.0.7"              # a pod: its address
    assert a.client(None) == ""
    sockets = [("192.168.1.5", p) for p in range(1000, 1000 + 2 * LOCAL_SHARES + 5)]
    got = [a.admit(s) for s in sockets]
    assert got.count(True) == 2 * LOCAL_SHARES and a.refused_host == 5    # LOCAL_SHARES clients' shares
    assert a.admit("10.244.0.7")                                          # pods are never crowded out
    for s in sockets[:2 * LOCAL_SHARES]:
        a.release(s)
    assert a.local_running == 0


def test_ipv4_clients_of_a_dual_stack_socket_are_keyed_as_ipv4_clients():
    """A block without bind listens on ::, where IPv4 senders arrive as
    ::ffff:a.b.c.d: a host socket must still be keyed per socket and a pod
    by its IPv4 address (one host socket got another REFUSED 20/20 before)."""
    a = Admission(total=10000, per_client=2, rate=0)
    a.local = frozenset({"192.168.1.5"})
    assert a.client(("::ffff:192.168.1.5", 40000, 0, 0)) == ("192.168.1.5", 40000)
    assert a.client(("::ffff:10.244.0.7", 40000, 0, 0)) == "10.244.0.7"
    assert a.client(("fd00::7", 40000, 0, 0)) == "fd00::7"


def test_host_network_sockets_share_one_rate_so_fresh_sockets_gain_nothing():
    """A host process spraying fresh sockets (each its own client) used to
    escape the per-client rate: 23 of a pod's 117 misses timed out. Every
    host-network socket together now starts at most LOCAL_SHARES clients'
    rate; the pods keep theirs."""
    clock = FakeClock()
    a = Admission(total=10 ** 6, per_client=10, rate=100, clock=clock)
    a.local = frozenset({"192.168.1.5"})
    admitted = 0
    for port in range(20000, 22000):  # 2,000 fresh sockets within one instant
        if a.admit(a.client(("192.168.1.5", port))):
            admitted += 1
            a.release(a.client(("192.168.1.5", port)))
    assert admitted == 100 * LOCAL_SHARES and a.refused_host_rate == 2000 - admitted
    for _ in range(100):  # a pod's own rate is untouched
        assert a.admit("10.244.0.7")
        a.release("10.244.0.7")
    clock.advance(1.0)
    assert a.admit(a.client(("192.168.1.5", 30000)))  # refilled


def test_spoofed_sources_cannot_grow_the_bucket_table_without_bound():
    clock = FakeClock()
    a = Admission(total=10 ** 6, per_client=10, rate=100, clock=clock)
    for i in range(MAX_BUCKETS):
        a.admit(f"spoof-{i}")
        a.release(f"spoof-{i}")
    clock.advance(2.0)                        # every bucket is full again: forgettable
    a.admit("one-more")
    assert len(a.buckets) <= 2
