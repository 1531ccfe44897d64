"""observe.udpdrops on its own: /proc/net/udp's drops column, a burst
logged once, overflowing after OVERFLOW_CHECKS checks with new drops and
cleared by one without."""
from __future__ import annotations

import logging
import os
import socket

from nodecache.observe import udpdrops

HEADER = ("   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref "
          "pointer drops\n")


def _line(inode: int, drops: int) -> str:
    return (f"  42: 0A14FEA9:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 {inode} 2 "
            f"00000000f00abb54 {drops}\n")


def test_the_drops_column_by_inode():
    assert udpdrops.parse(HEADER + _line(1234, 0) + _line(99, 17) + "garbage\n") == {1234: 0, 99: 17}


def test_a_burst_is_logged_once_overflowing_after_three_checks_and_cleared_by_a_quiet_one(tmp_path, caplog):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ino = os.fstat(sock.fileno()).st_ino
    proc = tmp_path / "udp"
    watch = udpdrops.DropWatch((str(proc),))
    listeners = {"dns://169.254.20.10:53": sock.fileno()}
    with caplog.at_level(logging.INFO, logger="nodecache.udp"):
        for drops in (5, 5, 40, 90, 200, 300, 300):
            proc.write_text(HEADER + _line(ino, drops))
            watch.check(listeners)
            if drops == 200:
                assert watch.overflowing() == ["dns://169.254.20.10:53"]
    sock.close()
    assert watch.totals == {"dns://169.254.20.10:53": 295}  # the count at the first check is the socket's past
    assert watch.overflowing() == []  # the last check found none new
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "35 queries dropped" in warnings[0].getMessage()


def test_a_new_socket_under_the_same_listener_never_counts_backwards(tmp_path):
    a, b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    proc = tmp_path / "udp"
    watch = udpdrops.DropWatch((str(proc),))
    proc.write_text(HEADER + _line(os.fstat(a.fileno()).st_ino, 100) + _line(os.fstat(b.fileno()).st_ino, 3))
    watch.check({"l": a.fileno()})
    watch.check({"l": b.fileno()})  # a reload replaced the socket
    assert watch.totals["l"] == 0
    a.close()
    b.close()
