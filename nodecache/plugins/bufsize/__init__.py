"""The ``bufsize`` plugin (README.md beside this file): no stage; the
block caps its clients' UDP size with it (``server.block``: ``max_udp``),
on every path, the hit path included."""
from ..plugin import Plugin
from .setup import setup

PLUGIN = Plugin("bufsize", setup, summary="cap the UDP size of replies (EDNS0 buffer size)",
                support="differs", note="UDP replies never exceed 1232 bytes, whatever SIZE")
