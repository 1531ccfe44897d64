"""The ``k8s_schema`` stage: end the impossible half of the ndots:5 search
walk at the node.

A pod's lookup of ``api.github.com`` first asks
``api.github.com.<ns>.svc.<zone>``, ``api.github.com.svc.<zone>`` and
``api.github.com.<zone>``, each a miss the cluster DNS answers NXDOMAIN.
This stage answers those here (``shape``):

* a name the Kubernetes DNS schema cannot produce gets NXDOMAIN at once
  (``schema``): ``<zone>``'s SOA in the authority section, learned from the
  cluster DNS's own negative answers (until one has been seen, such names
  are forwarded as before);
* RFC 8020: an NXDOMAIN for ``<ns>.svc.<zone>`` or ``<svc>.<ns>.svc.<zone>``
  means nothing exists below it, so a later name under it gets NXDOMAIN here
  until that denial expires (``rfc8020``). An NXDOMAIN for a longer name says
  nothing of its ancestors, so, as QNAME minimisation does (RFC 9156), before
  forwarding a name of a valid shape whose ``<ns>`` (or ``<svc>``) has no
  fresh answer here, the stage asks the cluster DNS for that ancestor itself:
  one query per distinct ancestor (coalesced and cached downstream), whose
  answer is kept for the denial's TTL (NXDOMAIN) or ``EXISTS_TTL`` (an
  answer or NODATA: an existing namespace is an empty non-terminal, never a
  cut; the full name is then forwarded as before).

* the rest of the walk at once: ``<X>.<ns>.svc.<zone>`` with a dot in X is
  the first query of a walk whose next steps are known: ``<X>.svc.<zone>``
  and ``<X>.<zone>`` (answered here), then ``<X>.<d>`` for each of the
  node's search domains (``search``, by default /etc/resolv.conf's) and
  ``<X>.``. Those last ones are asked at once, through the listener that
  received the query and on the client's own share of misses
  (``Request.ask``), so that each next query of the walk is a cache hit or
  joins the exchange already in flight; a walk is started once per name,
  type and flags within ``WALK_MEMORY``.

It sits after the cache (CoreDNS's ``autopath`` position): a cached answer
is served before the stage is asked. Its fast front (``plugins.chain``)
answers the schema and the known denials from the receive callback; it
takes no miss under the zone at the callback speed (those go through
``handle``, where the denials are learned) and passes every other one on.
"""
from __future__ import annotations

import logging

from dnslib import QTYPE, DNSRecord

from ...dns.key import TRAILER
from ...dns.reply import Reply
from ...dns.wire import NOERROR, NXDOMAIN, QR, RD, encode_name, make_query, parse_query
from ...ttlcache.entry import SUCCESS, Entry
from ..chain import Answer, Request, Shortcuts, Stage
from .setup import SchemaConfig
from .shape import IMPOSSIBLE, judge, labels_below, suffix

log = logging.getLogger("nodecache.k8s_schema")

RFC8020 = "rfc8020"
UNKNOWN = "unknown"      # an ancestor with no fresh answer: ``handle`` asks for it
EXISTS_TTL = 5.0         # how long an ancestor known to exist is trusted (CoreDNS's own default TTL)
MAX_ANCESTORS = 10_000   # denials and existences kept at most (then the oldest go)
WALK_MEMORY = 10.0       # seconds a started walk is remembered (not started again for the same name)
MAX_WALKS = 4096
RESOLV_CONF = "/etc/resolv.conf"
_IN = b"\x00\x01"


class SchemaStage(Stage):
    name = "k8s_schema"

    def __init__(self, cfg: SchemaConfig, clock):
        self.cfg = cfg
        self.zone = encode_name(cfg.zone)
        self.excepts = tuple(encode_name(e) for e in cfg.excepts)
        self.clock = clock
        self.soa: tuple | None = None         # the zone's SOA (mname, rname, times, ttl), learned
        self.nx: dict[int, Entry] = {}        # our NXDOMAIN by where the zone sits in the question
        self.denied: dict[bytes, float] = {}  # ancestor wire name -> until (NXDOMAIN seen)
        self.exists: dict[bytes, float] = {}  # ancestor wire name -> until (an answer or NODATA seen)
        self.answered = {IMPOSSIBLE: 0, RFC8020: 0}
        self.probes = {"nxdomain": 0, "exists": 0, "failed": 0}
        search = cfg.search if cfg.search is not None else node_search_domains(RESOLV_CONF)
        self.search = tuple(w for w in (encode_name(d) for d in search) if labels_below(w, self.zone) is None)
        self.walks: dict[bytes, float] = {}   # the last step of a started walk (its key) -> until
        self.prefetch = {"started": 0, "refused": 0}

    def shortcuts(self) -> Shortcuts:
        # after the cache: its fast answers skip nothing here; the callback
        # speed passes through ``take``, which keeps the zone's misses here
        return Shortcuts(hit=True, memo=True, direct=True)

    # -- the judgement --------------------------------------------------------
    def verdict(self, key: bytes, now: float) -> str | None:
        """IMPOSSIBLE or RFC8020 (answer NXDOMAIN), UNKNOWN (an ancestor to
        ask about first) or None (not ours to answer: pass it on)."""
        if key[-3:-1] != _IN:
            return None
        name = key[:-TRAILER]
        labels = labels_below(name, self.zone)
        if labels is None or self._excepted(name):
            return None
        judged = judge(labels, self.cfg.pods)
        if judged is IMPOSSIBLE:
            return IMPOSSIBLE
        for count in judged:
            ancestor = suffix(name, labels, count)
            if self.denied.get(ancestor, 0.0) > now:
                return RFC8020
            if self.exists.get(ancestor, 0.0) <= now:
                return UNKNOWN
        return None

    def _excepted(self, name: bytes) -> bool:
        return any(name == e or (name.endswith(e) and labels_below(name, e) is not None) for e in self.excepts)

    # -- the fast speed -------------------------------------------------------
    def front(self, data: bytes, scanned: tuple, now: float) -> bytes | None:
        reason = self.verdict(scanned[0], now)
        if reason is None:
            return self.next_front(data, scanned, now)
        if reason is UNKNOWN or self.soa is None or (reason is IMPOSSIBLE and self._walk_to_start(scanned[0], now)):
            return None  # ``handle`` asks the cluster DNS (and learns its SOA), or starts the walk
        self.answered[reason] += 1
        return self._nx_reply(data, scanned[1], scanned[2], scanned[4])

    def take(self, key: bytes, asker, on_done) -> bool:
        if labels_below(key[:-TRAILER], self.zone) is not None:
            return False  # the zone's misses go through ``handle``: what they answer is learned
        return self.next_take(key, asker, on_done)

    # -- the slow path --------------------------------------------------------
    async def handle(self, request: Request) -> Answer:
        q = request.query
        now = self.clock()
        reason = self.verdict(q.key, now)
        if reason is UNKNOWN:
            reason = await self._ask_ancestors(q.key, now)
        if reason is IMPOSSIBLE and request.ask is not None:
            self._walk_on(q.key, request, now)
        if reason is not None and self.soa is not None:
            self.answered[reason] += 1
            return Answer(NXDOMAIN, wire=self._nx_reply(q.data, q.qend, q.flags, q.edns), plugin=self.name)
        answer = await self.next(request)
        self._learn(q.key[:-TRAILER], answer.reply, now)
        return answer

    # -- the rest of the walk -------------------------------------------------
    def _walk_rest(self, key: bytes) -> list[bytes]:
        """The queries of the walk ``key`` (a name the schema cannot produce:
        its callers have judged it) begins that are not under the zone
        (``<X>.<search domain>`` for each, then ``<X>.``; the last is the one
        a walk is remembered by), or [] when ``key`` begins none."""
        name = key[:-TRAILER]
        labels = labels_below(name, self.zone)
        if labels is None or len(labels) < 4 or labels[-1] != b"svc":
            return []
        x = name[:len(name) - len(suffix(name, labels, 2))]  # <X>: the labels before <ns>.svc.<zone>, no root
        trailer = key[-TRAILER:]
        return [x + d + trailer for d in self.search] + [x + b"\x00" + trailer]

    def _walk_to_start(self, key: bytes, now: float) -> bool:
        rest = self._walk_rest(key)
        return bool(rest) and self.walks.get(rest[-1], 0.0) <= now

    def _walk_on(self, key: bytes, request: Request, now: float) -> None:
        """Ask the rest of the walk ``key`` begins, once per WALK_MEMORY."""
        rest = self._walk_rest(key)
        if not rest or self.walks.get(rest[-1], 0.0) > now:
            return
        if len(self.walks) >= MAX_WALKS:
            for old in list(self.walks)[:MAX_WALKS // 10]:
                del self.walks[old]
        self.walks[rest[-1]] = now + WALK_MEMORY
        for step in rest:
            self.prefetch["started" if request.ask(step, request.client) else "refused"] += 1

    async def _ask_ancestors(self, key: bytes, now: float) -> str | None:
        """Ask the cluster DNS for each ancestor with no fresh answer, the
        shortest first; RFC8020 as soon as one is denied."""
        name = key[:-TRAILER]
        labels = labels_below(name, self.zone)
        for count in judge(labels, self.cfg.pods):
            ancestor = suffix(name, labels, count)
            if self.denied.get(ancestor, 0.0) > now:
                return RFC8020
            if self.exists.get(ancestor, 0.0) > now:
                continue
            query = make_query(0, ancestor + b"\x00\x01" + _IN, RD)
            try:
                answer = await self.next(Request(parse_query(query), proto="internal"))
            except Exception as exc:  # the full name is forwarded as before
                self.probes["failed"] += 1
                log.debug("asking for %r failed: %s", ancestor, exc)
                return None
            learned = self._learn(ancestor, answer.reply, self.clock())
            self.probes[learned or "failed"] += 1
            if learned == "nxdomain":
                return RFC8020
            if learned is None:
                return None
        return None

    def _learn(self, name: bytes, reply: Reply | None, now: float) -> str | None:
        """What an upstream reply for ``name`` teaches: the zone's SOA (from a
        negative answer), and whether an ancestor-shaped name is denied or
        exists. Returns "nxdomain", "exists" or None (nothing usable)."""
        if reply is None or reply.rcode not in (NOERROR, NXDOMAIN):
            return None
        if reply.negative_ttl is not None:
            self._learn_soa(reply)
        labels = labels_below(name, self.zone)
        if labels is None or len(labels) not in (2, 3) or labels[-1] != b"svc":
            return "nxdomain" if reply.rcode == NXDOMAIN else "exists"
        table = self.denied if reply.rcode == NXDOMAIN else self.exists
        if reply.rcode == NXDOMAIN:
            ttl = float(reply.negative_ttl if reply.negative_ttl is not None else EXISTS_TTL)
        else:
            ttl = min(EXISTS_TTL, float(reply.min_ttl)) if reply.min_ttl is not None else EXISTS_TTL
        if len(table) >= MAX_ANCESTORS:
            for old in list(table)[:MAX_ANCESTORS // 10]:
                del table[old]
        table.pop(name, None)
        table[name] = now + ttl
        (self.exists if table is self.denied else self.denied).pop(name, None)
        return "nxdomain" if reply.rcode == NXDOMAIN else "exists"

    def _learn_soa(self, reply: Reply) -> None:
        """The zone's SOA from a negative answer: what our NXDOMAIN carries."""
        message = (b"\x00\x00\x80\x00\x00\x01" + b"".join(c.to_bytes(2, "big") for c in reply.counts)
                   + reply.qkey + reply.tail)
        try:
            record = DNSRecord.parse(message)
        except Exception:
            return
        soa = next((rr for rr in record.auth if rr.rtype == QTYPE.SOA), None)
        if soa is None or encode_name(str(soa.rname)).lower() != self.zone:
            return
        rd = soa.rdata
        learned = (encode_name(str(rd.mname)).lower(), encode_name(str(rd.rname)).lower(),
                   b"".join(int(t).to_bytes(4, "big") for t in rd.times), min(soa.ttl, rd.times[4]))
        if learned != self.soa:
            self.soa, self.nx = learned, {}

    def _nx_reply(self, data: bytes, qend: int, qflags: int, edns: int) -> bytes:
        """NXDOMAIN for this query, its SOA written as a compressing server
        writes it: the owner, and the zone in MNAME and RNAME, point at the
        zone's name inside the client's question, so the names come back in
        the client's letter case exactly as through the cache."""
        at = qend - 4 - len(self.zone)  # the question's name ends with the zone
        entry = self.nx.get(at)
        if entry is None:
            mname, rname, times, ttl = self.soa
            pointer = (0xC000 | at).to_bytes(2, "big")
            rdata = self._pointed(mname, pointer) + self._pointed(rname, pointer) + times
            rr = pointer + b"\x00\x06" + _IN + ttl.to_bytes(4, "big") + len(rdata).to_bytes(2, "big") + rdata
            if len(self.nx) >= 256:
                self.nx.clear()
            entry = self.nx[at] = Entry(b"", Reply(QR | NXDOMAIN, NXDOMAIN, b"", 0, (0, 1, 0), rr, (6,), (ttl,),
                                                   ttl, ttl), SUCCESS, 0x7FFFFFFF, 0.0)
        return entry.render(data, qend, qflags, edns, 0.0)

    def _pointed(self, name: bytes, pointer: bytes) -> bytes:
        """``name`` with its zone suffix as ``pointer`` (uncompressed when it is not under the zone)."""
        if labels_below(name, self.zone) is None:
            return name
        return name[:len(name) - len(self.zone)] + pointer

    def close(self) -> None:
        self.denied.clear()
        self.exists.clear()
        self.walks.clear()


def node_search_domains(path: str) -> tuple[str, ...]:
    """The search domains of a resolv.conf (the last ``search`` or
    ``domain`` line wins, as in glibc); () when it cannot be read."""
    domains: tuple[str, ...] = ()
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                words = line.split()
                if words and words[0] in ("search", "domain"):
                    domains = tuple(w.lower().rstrip(".") + "." for w in words[1:] if w.strip("."))
    except OSError:
        return ()
    return domains
