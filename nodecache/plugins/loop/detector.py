"""The ``loop`` directive: notice when our upstream forwards our queries back
to us, and contain it instead of crash-looping.

At start (and after every reload) the block sends one probe through its
own forwarder: ``<random>.<random>.<zone> HINFO``, a name nobody else can
ask. If that name arrives at one of our listeners, the upstream sent it
back. One echo is not yet a loop (an upstream may hand a name back once);
as in CoreDNS, the probe is forwarded again, uncoalesced, and a loop is
declared when it has come back ``THRESHOLD`` times. CoreDNS exits then
(and the pod crash-loops, taking the node's DNS with it); here the block
logs once, marks itself unready (/ready and the readiness probe say why),
and answers SERVFAIL for its zone until the configuration changes, while
every other block keeps serving.
"""
from __future__ import annotations

import logging
import secrets

from ...dns.key import make as make_key, name as key_name
from ...dns.wire import encode_name

log = logging.getLogger("nodecache.loop")
HINFO = 13
THRESHOLD = 3  # sightings of our probe that make a loop (CoreDNS: more than 2)


class LoopDetector:
    def __init__(self, zone: str):
        self.zone = zone
        labels = f"{secrets.randbelow(10**9)}.{secrets.randbelow(10**9)}"
        self.name = f"{labels}.{zone}" if zone != "." else f"{labels}."
        self.wire = encode_name(self.name)
        self.key = make_key(self.wire, HINFO)
        self.detected = False
        self.seen = 0

    def sighted(self, key: bytes) -> bool:
        """True if queries of this block must be refused (SERVFAIL) because of a loop."""
        if self.detected:
            return True
        if key_name(key) == self.wire:
            self.seen += 1
            if self.seen < THRESHOLD:
                return False  # forwarded again (see ForwardStage): a loop brings it back
            self.detected = True
            log.error("forwarding loop detected for zone %s: our probe %s HINFO came back to us %d times; "
                      "answering SERVFAIL for %s until the configuration changes", self.zone,
                      self.name, self.seen, self.zone)
            return True
        return False

    def is_probe(self, key: bytes) -> bool:
        return key_name(key) == self.wire
