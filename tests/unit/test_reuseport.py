"""server.reuseport: joining a port another process serves, and steering the
group to the newcomer (real sockets on 127.0.0.1)."""
import os
import socket
import time

from nodecache.server import reuseport
from nodecache.server.agent import make_sockets
from nodecache.emulated.client import free_port

UDP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"


def test_proc_tables_are_read_in_the_kernels_byte_order():
    table = "\n".join([UDP_HEADER,
                       "  1: 0A14FEA9:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 4242 2",
                       "  2: 0100007F:1F90 00000000:0000 01 00000000:00000000 00:00000000 00000000 0 0 77 2"])
    assert reuseport.bound_sockets(table, listening_only=False) == [("169.254.20.10", 53, 4242), ("127.0.0.1", 8080, 77)]
    assert reuseport.bound_sockets(table, listening_only=True) == []  # state 07/01: no TCP listener
    v6 = "\n".join([UDP_HEADER, "  0: 000000FD000000000000000010000000:0035 " + "0" * 32 +
                    ":0000 0A 00000000:00000000 00:00000000 00000000 0 0 9 1"])
    assert reuseport.bound_sockets(v6, listening_only=True) == [("fd00::10", 53, 9)]


def _drain(sock: socket.socket) -> int:
    n = 0
    sock.setblocking(False)
    try:
        while True:
            sock.recv(64)
            n += 1
    except BlockingIOError:
        return n


def test_a_newcomer_joins_and_takes_every_new_datagram_and_connection():
    port = free_port()
    old_udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    old_tcp = socket.socket()
    for s in (old_udp, old_tcp):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
    old_tcp.listen()
    udp, tcp = make_sockets("127.0.0.1", port)
    try:
        ours = {os.fstat(udp.fileno()).st_ino, os.fstat(tcp.fileno()).st_ino}
        assert reuseport.others_hold("127.0.0.1", port, ours)
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.sendto(b"q", ("127.0.0.1", port))
        conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(10)]
        time.sleep(0.1)
        assert (_drain(old_udp), _drain(udp)) == (0, 100)  # without steering, a hash spreads them
        old_tcp.setblocking(False)
        tcp.setblocking(False)
        accepted = 0
        while True:
            try:
                tcp.accept()[0].close()
                accepted += 1
            except BlockingIOError:
                break
        assert accepted == 10
        for c in conns:
            c.close()
        old_udp.close()
        old_tcp.close()
        assert not reuseport.others_hold("127.0.0.1", port, ours)  # alone now: no one to leave networking to
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.sendto(b"q", ("127.0.0.1", port))
        time.sleep(0.05)
        assert _drain(udp) == 1
    finally:
        udp.close()
        tcp.close()


def test_a_holder_without_reuseport_is_still_an_error():
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", port))
        try:
            make_sockets("127.0.0.1", port)
        except OSError as exc:
            assert "Address already in use" in str(exc)
        else:
            raise AssertionError("bound beside an exclusive holder")
