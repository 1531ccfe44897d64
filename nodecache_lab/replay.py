"""Replay scenarios: a test written as data, in the spirit of Unbound's
testdata/*.rpl. A scenario file (tests/scenario/replays/NAME.rpl) holds a
Corefile, the upstream's canned answers, and steps run against a real agent
on 127.0.0.1 whose clock is injected (time passes only when a step says so).

    ; comment (also after a step)
    SCENARIO one line saying what is shown
    CONFIG                        Corefile until END; {port} = the agent's, {up0} = the upstream's
    ENTRY QNAME QTYPE             the upstream's answer to QNAME QTYPE, until END:
      RCODE NXDOMAIN                (default NOERROR)
      ANSWER <zone-file RR>         any number of ANSWER / AUTHORITY lines
      AUTHORITY <zone-file RR>
    END                           a later ENTRY for the same question replaces it
    QUERY QNAME QTYPE [tcp] [edns] [do] [cd] [ad]   default: UDP, RD, no OPT (like glibc)
    CHECK_ANSWER key=value ...    of the last reply:
      rcode=NAME  answers=N  authority=N  ttl=N (every answer/authority TTL)
      flags=QR,RD,RA (exactly these header bits)  opt=yes|no  do=0|1
      qname=NAME (echoed exactly, case included)  upstream=N (queries it got so far)
    CHECK_UPSTREAM N              the upstream has got N queries (waits for
                                  background work such as a refresh, up to 5 s)
    TIME_PASSES SECONDS           advance the agent's clock

Every reply is also parsed by dnspython, which rejects trailing junk, bad
counts and misplaced OPT records.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
from dnslib import EDNS0, QTYPE, RCODE, RR, DNSRecord

from nodecache.dns.wire import AD, CD, RD
from nodecache.emulated.client import build
from nodecache_lab.fakes import FakeClock, eventually
from nodecache_lab.harness import node

FLAG_BITS = {"QR": 0x8000, "AA": 0x0400, "TC": 0x0200, "RD": 0x0100, "RA": 0x0080, "AD": 0x0020, "CD": 0x0010}


class ReplayError(Exception):
    pass


@dataclass
class Scenario:
    title: str = ""
    corefile: str = ""
    steps: list[tuple[int, str, list[str], dict]] = field(default_factory=list)  # (line, verb, args, entry)


def parse(path: Path) -> Scenario:
    sc = Scenario()
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        lineno, raw = i + 1, lines[i]
        i += 1
        words = shlex.split(raw.split(";", 1)[0])
        if not words:
            continue
        verb, args = words[0].upper(), words[1:]
        if verb == "SCENARIO":
            sc.title = " ".join(args)
        elif verb == "CONFIG":
            body, i = _block(lines, i, path)
            sc.corefile = "\n".join(body)
        elif verb == "ENTRY":
            body, i = _block(lines, i, path)
            sc.steps.append((lineno, verb, args, _entry(args, body, f"{path}:{lineno}")))
        elif verb in ("QUERY", "CHECK_ANSWER", "CHECK_UPSTREAM", "TIME_PASSES"):
            sc.steps.append((lineno, verb, args, {}))
        else:
            raise ReplayError(f"{path}:{lineno}: unknown step {verb}")
    if not sc.corefile:
        raise ReplayError(f"{path}: no CONFIG")
    return sc


def _block(lines: list[str], i: int, path: Path) -> tuple[list[str], int]:
    body = []
    while i < len(lines):
        if lines[i].strip() == "END":
            return body, i + 1
        body.append(lines[i])
        i += 1
    raise ReplayError(f"{path}: block not closed by END")


def _entry(args: list[str], body: list[str], where: str) -> dict:
    if len(args) != 2:
        raise ReplayError(f"{where}: ENTRY QNAME QTYPE")
    entry = {"rcode": RCODE.NOERROR, "answer": [], "authority": []}
    for line in body:
        text = line.split(";", 1)[0].strip()
        if not text:
            continue
        word, _, rest = text.partition(" ")
        if word == "RCODE":
            entry["rcode"] = getattr(RCODE, rest.strip())
        elif word in ("ANSWER", "AUTHORITY"):
            entry[word.lower()].extend(RR.fromZone(rest))
        else:
            raise ReplayError(f"{where}: unknown ENTRY line {text!r}")
    return entry


class CannedUpstream:
    """Answers from the scenario's entries; REFUSED for anything else."""

    def __init__(self):
        self.entries: dict[tuple[str, int], dict] = {}

    def answer(self, data: bytes) -> bytes | None:
        req = DNSRecord.parse(data)
        rep = req.reply(ra=1, aa=1)
        entry = self.entries.get((str(req.q.qname).lower(), req.q.qtype))
        if entry is None:
            rep.header.rcode = RCODE.REFUSED
        else:
            rep.header.rcode = entry["rcode"]
            for rr in entry["answer"]:
                rep.add_answer(rr)
            for rr in entry["authority"]:
                rep.add_auth(rr)
        opt = next((r for r in req.ar if r.rtype == QTYPE.OPT), None)
        if opt is not None:  # RFC 6891 §7 and RFC 3225 §3: OPT answered, DO copied
            rep.add_ar(EDNS0(udp_len=1232, flags="do" if opt.ttl & 0x8000 else ""))
        return rep.pack()


SHORTCUTS = ("all", "nomemo", "nodirect", "none")  # which shortcuts the blocks may take
READS = ("single", "batched", "polled")              # how UDP is read
POLL_WINDOW = 0.002


async def play(path: Path, shortcuts: str = "all", reads: str = "single") -> None:
    """Run one scenario. ``shortcuts``: all those its blocks allow, all but
    the memo, all but the direct miss, or none (every hit through the stage
    chain as a miss is: the slow path); ``reads``: UDP one datagram per
    wakeup, recvmmsg batches, or polls of a coalescing window (-udp-coalesce)
    from the first query on. Every combination must give the same replies
    and the same upstream traffic (tests/scenario/test_replays.py)."""
    sc = parse(path)
    canned, clock = CannedUpstream(), FakeClock()
    corefile = sc.corefile.replace("{", "{{").replace("}", "}}").replace("{{port}}", "{port}") \
        .replace("{{up0}}", "{up0}")
    coalesce = POLL_WINDOW if reads == "polled" else 0.0
    async with node(corefile, clock=clock, answer=canned.answer, udp_coalesce=coalesce) as n:
        for block in n.agent.blocks:
            _limit(block, shortcuts)
        for listener in n.agent.listeners:
            if hasattr(listener.udp, "use_batches"):
                listener.udp.use_batches(reads != "single")
                if reads == "polled":
                    listener.udp.start_polling(1.0)
        await _steps(sc, path, n, canned, clock)
        if shortcuts != "all":
            _expect(all(len(lst.path.memo) == 0 for lst in n.agent.listeners), path.name, "memo was off")


def _limit(block, shortcuts: str) -> None:
    """Take away the shortcuts ``shortcuts`` does not allow (see ``play``)."""
    if shortcuts == "none":
        block.front = None
    block.memoizable = block.memoizable and shortcuts == "all"
    if shortcuts not in ("all", "nomemo"):
        block.take = None


async def _steps(sc: Scenario, path: Path, n, canned, clock) -> None:
    last: bytes | None = None
    for lineno, verb, args, entry in sc.steps:
        where = f"{path.name}:{lineno}"
        if verb == "ENTRY":
            canned.entries[(args[0].lower().rstrip(".") + ".", getattr(QTYPE, args[1]))] = entry
        elif verb == "QUERY":
            last = await _query(n, args)
            _strict(last, where)
        elif verb == "TIME_PASSES":
            clock.advance(float(args[0]))
        elif verb == "CHECK_UPSTREAM":
            want = int(args[0])
            await eventually(lambda: len(n.up.seen) >= want, what=f"{where}: upstream reaches {want}")
            _expect(len(n.up.seen) == want, where, f"upstream got {len(n.up.seen)} queries, want {want}")
        elif verb == "CHECK_ANSWER":
            if last is None:
                raise ReplayError(f"{where}: CHECK_ANSWER before any QUERY")
            _check(last, args, n, where)


async def _query(n, args: list[str]) -> bytes:
    name, qtype, opts = args[0], getattr(QTYPE, args[1]), {a.lower() for a in args[2:]}
    flags = RD | (CD if "cd" in opts else 0) | (AD if "ad" in opts else 0)
    edns = 1 if "do" in opts else 0 if "edns" in opts else -1
    data = build(name, qtype, do=edns, flags=flags)
    return await (n.tcp(data) if "tcp" in opts else n.udp(data))


def _strict(wire: bytes, where: str) -> None:
    try:
        dns.message.from_wire(wire)
    except Exception as exc:
        raise AssertionError(f"{where}: dnspython rejects the reply: {exc!r}") from exc


def _expect(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise AssertionError(f"{where}: {message}")


def _check(wire: bytes, args: list[str], n, where: str) -> None:
    rec = DNSRecord.parse(wire)
    flags = wire[2] << 8 | wire[3]
    opt = [r for r in rec.ar if r.rtype == QTYPE.OPT]
    for arg in args:
        key, _, want = arg.partition("=")
        if key == "rcode":
            got = RCODE.get(rec.header.rcode)
        elif key == "answers":
            got = str(len(rec.rr))
        elif key == "authority":
            got = str(len(rec.auth))
        elif key == "ttl":
            got = ",".join(sorted({str(r.ttl) for r in rec.rr + rec.auth})) or "none"
        elif key == "flags":
            got = ",".join(f for f, bit in FLAG_BITS.items() if flags & bit)
            want = ",".join(f for f in FLAG_BITS if f in want.split(","))
        elif key == "opt":
            got = "yes" if opt else "no"
        elif key == "do":
            got = str(opt[0].ttl >> 15 & 1) if opt else "no OPT"
        elif key == "qname":
            got = str(rec.q.qname)
        elif key == "upstream":
            got = str(len(n.up.seen))
        else:
            raise ReplayError(f"{where}: unknown check {key}")
        _expect(got == want, where, f"{key}: got {got}, want {want}\n{rec}")


def scenarios(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.rpl"))
