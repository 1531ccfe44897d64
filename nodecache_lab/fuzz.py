"""Coverage-guided fuzz targets for every parser that reads outside bytes.

Each target takes one input (bytes) and checks properties, raising
AssertionError when one fails; any exception other than the parser's
documented error is a finding too. They run under atheris (libFuzzer for
Python: coverage-guided, it mutates inputs towards new branches), as
unbound and CoreDNS are fuzzed continuously:

    python -m nodecache_lab.fuzz TARGET [libFuzzer flags] [CORPUS DIR...]

with the seeds of ``tests/data/fuzz/TARGET``; ``make test`` runs each for a
short bounded count (tests/unit/test_fuzz.py), ``python -m
bench.guided`` for longer and reports executions and coverage.

The targets and what they hold:

* ``query``: ``scan`` (hot path), ``parse_query`` (slow path, QueryError
  only) and ``query_from_scan`` agree: what the direct miss path takes is
  exactly what the slow path forwards (same Query, a served question); and
  a listener's real query path (``server.querypath``, over a block with a
  cache and a forwarder, the cache filled) answers a hit on its fast path
  (the cache's, then the memo's) exactly as its slow path (the stage chain)
  answers the same query, byte for byte.
* ``reply``: ``analyse`` raises MalformedReply only; an accepted reply that
  the cache keeps renders for a client into a reply ``analyse`` accepts.
* ``framing``: FrameReader raises FrameTooLarge only, and the messages do
  not depend on how the stream was split into reads.
* ``snapshot``: ``decode`` raises SnapshotError only, and every entry it
  returns renders.
* ``corefile``: ``parse_config`` raises CorefileError only.
* ``configmap``: the kube-dns ConfigMap reader raises ConfigMapError only.
"""
from __future__ import annotations

import sys
import tempfile
import types
from pathlib import Path

from nodecache.ttlcache.snapshot import SnapshotError, decode
from nodecache.ttlcache.store import Cache
from nodecache.observe.stats import ListenerStats
from nodecache.server.block import Block
from nodecache.server.querypath import Fixed, QueryPath
from nodecache.server.router import Router
from nodecache.config.corefile import CorefileError
from nodecache.ttlcache.options import CacheConfig
from nodecache.config.parse import parse_config
from nodecache.dns.framing import FrameReader, FrameTooLarge
from nodecache.dns.key import question as key_question
from nodecache.dns.reply import MalformedReply, analyse
from nodecache.dns.wire import QueryError, make_query, parse_query, query_from_scan, question_bytes, refusal, scan
from nodecache.config.nodeconfig import ConfigMapError, read_kubedns_configmap
from nodecache.emulated.upstream import ClusterDNS

NOW = 1000.0
CACHED_NAMES = ("kubernetes.default.svc.cluster.local", "svc-1.default.svc.cluster.local",
                "nope.default.svc.cluster.local", "www.example.com")


def _clock() -> float:
    return NOW


def _filled_path() -> QueryPath:
    """A listener's query path over one block (``cache``, ``forward`` to a
    port nothing is asked on: a miss is never sent), its cache holding
    answers (A, AAAA, NXDOMAIN; with and without DO) from the emulated
    cluster DNS, so that mutated seed queries hit it."""
    (cfg,) = parse_config(".:53 {\n    cache 30\n    forward . 127.0.0.1:9\n}\n", "fuzz").blocks
    block, dns = Block(cfg, _clock), ClusterDNS()
    for name in CACHED_NAMES:
        for qtype in (1, 28):
            for do in (-1, 0, 1):
                q = make_query(1, question_bytes(name, qtype), do=do)
                block.cache.insert(scan(q)[0], analyse(dns.answer(q)))
    return _FrontOnly(Router([block]), ListenerStats("dns://:53", "1"), clock=_clock)


class _FrontOnly(QueryPath):
    """The real dispatch, up to where a miss would leave it (admission, a
    task): None there, with no event loop needed."""

    def _miss(self, data, proto, via, ref, s, block, zone):
        return None


_VIA = Fixed(lambda reply, addr: None)
_CLIENT = ("127.0.0.1", 5353)


def _slow_answer(path: QueryPath, data: bytes) -> bytes | None:
    """The slow path's reply, driven without an event loop: for a query
    the cache answers, the chain never waits on anything."""
    coro = path.answer(data, "udp", ("127.0.0.1", 5353), scan(data))
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("the slow path waited for a query the fast path answered")


_PATH = None


def query(data: bytes) -> None:
    global _PATH
    if _PATH is None:
        _PATH = _filled_path()
    try:
        slow = parse_query(data)
    except QueryError as exc:
        slow = None
        assert exc.rcode is None or exc.rcode in (1, 4, 5, 16), exc.rcode
    scanned = scan(data)
    if scanned is None:
        return
    key, qend, flags, limit, edns = scanned
    taken = query_from_scan(data, scanned)
    if taken is not None:  # the direct miss path's test: it may forward this
        assert slow == taken, (slow, taken)
        assert refusal(taken.qtype, taken.qclass) is None
    fast = _PATH.dispatch(data, "udp", _VIA, _CLIENT)
    if fast is not None:  # a hit on the fast path: the slow path answers the same
        assert slow is not None and slow.key == key
        assert _slow_answer(_PATH, data) == fast
        again = _PATH.dispatch(data, "udp", _VIA, _CLIENT)  # from the memo now, if the block allows it
        assert again == fast, (again, fast)


def reply(data: bytes) -> None:
    try:
        r = analyse(data)
    except MalformedReply:
        return
    cache = Cache(CacheConfig(), _clock)
    key = r.qkey + b"\x00"
    entry = cache.insert(key, r)
    if entry is None:
        return
    q = make_query(0x1234, key_question(key))
    s = scan(q)
    if s is None:  # a question scan does not read (a zero inside a label): the slow path's case
        return
    out = entry.render(q, s[1], s[2], s[4], NOW + 1)
    again = analyse(out)
    assert again.qkey == r.qkey and again.rcode == r.rcode and again.counts == r.counts


def framing(data: bytes) -> None:
    if len(data) < 2:
        return
    cuts, stream = data[0], data[1:]
    whole, split = FrameReader(4096), FrameReader(4096)
    try:
        want = whole.feed(stream)
    except FrameTooLarge:
        want = None
    got, pos, step = [], 0, (cuts % 7) + 1
    try:
        while pos < len(stream):
            got += split.feed(stream[pos:pos + step])
            pos += step
            step = (step * 5 + cuts) % 23 + 1
    except FrameTooLarge:
        got = None
    assert (want is None) == (got is None)
    if want is not None:
        assert got == want and split.pending == whole.pending


def snapshot(data: bytes) -> None:
    try:
        blocks = decode(data, NOW)
    except SnapshotError:
        return
    for entries in blocks.values():
        for entry in entries:
            q = make_query(7, key_question(entry.key))
            s = scan(q)
            if s is not None:
                entry.render(q, s[1], s[2], s[4], NOW)
                entry.render_stale(q, s[1], s[2], s[4])


def corefile(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        parse_config(text, "fuzz", env={})
    except CorefileError:
        pass


_CONFIGMAP_DIR = None


def configmap(data: bytes) -> None:
    """Input: the stubDomains file, a NUL, the upstreamNameservers file."""
    global _CONFIGMAP_DIR
    if _CONFIGMAP_DIR is None:
        _CONFIGMAP_DIR = Path(tempfile.mkdtemp(prefix="nodecache-fuzz-"))
    stubs, _, upstreams = data.partition(b"\x00")
    (_CONFIGMAP_DIR / "stubDomains").write_bytes(stubs)
    (_CONFIGMAP_DIR / "upstreamNameservers").write_bytes(upstreams)
    try:
        good, servers, problems = read_kubedns_configmap(_CONFIGMAP_DIR)
    except ConfigMapError:
        return
    assert isinstance(good, dict) and isinstance(servers, list) and isinstance(problems, list)


TARGETS = {f.__name__: f for f in (query, reply, framing, snapshot, corefile, configmap)}


def _instrument(atheris, packages: tuple[str, ...]) -> int:
    """Coverage instrumentation for every function of the loaded modules of
    ``packages`` (instrument_all would take the whole standard library too:
    ~20 s at each start). Returns how many functions."""
    done: set[int] = set()

    def visit(obj) -> None:
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
        elif isinstance(obj, property):
            for f in (obj.fget, obj.fset, obj.fdel):
                if f is not None:
                    visit(f)
            return
        if isinstance(obj, types.FunctionType) and id(obj) not in done \
                and (obj.__module__ or "").startswith(packages):
            done.add(id(obj))
            atheris.instrument_func(obj)
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(packages):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, type) and (value.__module__ or "").startswith(packages):
                for member in list(vars(value).values()):
                    visit(member)
            else:
                visit(value)
    return len(done)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: python -m nodecache_lab.fuzz {{{','.join(TARGETS)}}} [libFuzzer flags] [CORPUS...]")
    try:
        import atheris
    except ImportError:
        sys.exit("atheris is not installed (pip install atheris; Linux x86_64 wheels)")
    target = TARGETS[argv.pop(1)]
    _instrument(atheris, ("nodecache", "dnslib"))
    atheris.Setup(argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
