"""Which server block answers a name on one listening address: the block
whose zone is the longest suffix of the name (CoreDNS's rule). Zones are
keyed by their lower-case wire form, so matching is a few dict lookups
on suffixes of the name that start at label boundaries, longest first.
"""
from __future__ import annotations

from ..dns.key import TRAILER
from ..dns.wire import encode_name
from .block import Block


class Router:
    def __init__(self, blocks: list[Block]):
        self.by_zone: dict[bytes, tuple[Block, str]] = {}
        for block in blocks:
            for zone in block.cfg.zones:
                self.by_zone[encode_name(zone)] = (block, zone)
        self.only = self.by_zone[b"\x00"] if len(self.by_zone) == 1 and b"\x00" in self.by_zone else None

    def block_for(self, key: bytes) -> tuple[Block, str] | None:
        """(block, zone) for a cache key (see dns.key)."""
        if self.only is not None:
            return self.only
        end = len(key) - TRAILER
        get = self.by_zone.get
        i = 0
        while i < end:
            block = get(key[i:end])
            if block is not None:
                return block
            i += key[i] + 1
        return None

    @property
    def blocks(self) -> list[Block]:
        return list(dict.fromkeys(b for b, _ in self.by_zone.values()))
