"""The ``bufsize`` plugin (README.md beside this file): no stage; the
block caps its clients' UDP size with it (``server.block``: ``max_udp``),
on every path, the hit path included."""
from ...dns.wire import EDNS_SIZE
from ..plugin import Plugin
from .setup import setup


def max_udp(block) -> int:
    """The largest UDP reply for the clients of ``block`` (a ``ServerBlock``):
    its ``bufsize``, never above ours."""
    return min(block.option("bufsize", EDNS_SIZE), EDNS_SIZE)

PLUGIN = Plugin("bufsize", setup, summary="cap the UDP size of replies (EDNS0 buffer size)",
                support="differs", note="UDP replies never exceed 1232 bytes, whatever SIZE")
