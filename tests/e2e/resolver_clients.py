"""Real resolver implementations, as pods run them, for the interoperability
suite (test_resolvers.py): each asks one question from inside a network
namespace and says what it got, normalised so that every client's answer can
be compared with what the cluster DNS itself holds.

A client is a command line per (kind, name): kinds are ``addr`` (every
address, as getaddrinfo gives them), ``a``, ``aaaa``, ``srv``, ``txt``,
``ptr`` (the name is an address) and ``cname``. Its output is a sorted list
of answers (addresses, ``PRIO WEIGHT PORT TARGET.``, TXT strings joined,
names with a trailing dot), or ``ERR`` for a failed lookup. The stub
resolvers (glibc, musl, Go, dnspython) read the pod's resolv.conf and walk
its search list; the query tools (dig, kdig, drill, busybox nslookup, Node's
c-ares ``resolve*``) ask the server named and take names as given.

Programs in C (musl-gcc) and Go are built once per test session from
``clients/``; a client whose tool is missing is skipped with the reason.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).parent / "clients"
DIG_TYPES = {"addr": "A", "a": "A", "aaaa": "AAAA", "srv": "SRV", "txt": "TXT", "ptr": "PTR", "cname": "CNAME"}


@dataclass
class Lookup:
    """What one client got for one question."""
    answers: list[str]
    failed: bool = False
    rcode: str = ""        # the query tools print it
    flags: set[str] = field(default_factory=set)
    seconds: float = 0.0
    raw: str = ""


@dataclass
class Client:
    name: str
    searches: bool          # walks the pod's search list (a stub resolver)
    kinds: frozenset[str]   # which kinds it can ask
    argv: object            # (kind, name, server, options) -> list[str]
    parse: object           # (stdout, kind) -> Lookup
    needs: tuple[str, ...] = ()  # tools that must exist
    env: dict[str, str] = field(default_factory=dict)

    def missing(self) -> str | None:
        gone = [tool for tool in self.needs if shutil.which(tool) is None and not Path(tool).exists()]
        return f"{', '.join(gone)} not installed" if gone else None


def _lines(out: str) -> list[str]:
    return sorted(line.strip() for line in out.splitlines() if line.strip())


def _stub(out: str, kind: str) -> Lookup:
    lines = _lines(out)
    if any(line.startswith("ERR") for line in lines):
        return Lookup([], failed=True, raw=out)
    if kind == "ptr" or kind == "cname" or kind == "srv":
        lines = sorted(line if line.endswith(".") else line + "." for line in lines)
    return Lookup(sorted(set(lines)), raw=out)


_RCODE = re.compile(r"(?:status|rcode): (\w+)")
_FLAGS = re.compile(r";; [Ff]lags: ([a-z ]*?)\s*;")


def _presentation(out: str, kind: str) -> Lookup:
    """dig, kdig and drill: the header's rcode and flags, the answer section's records."""
    rcode = _RCODE.search(out)
    flags = _FLAGS.search(out)
    answers, section = [], None
    for line in out.splitlines():
        if line.startswith(";;") and "SECTION" in line:
            section = line
            continue
        if not line.strip() or line.startswith(";"):
            if not line.strip():
                section = None
            continue
        if section is not None and "ANSWER" in section:
            parts = line.split()
            if len(parts) >= 5 and parts[3] == DIG_TYPES[kind]:
                data = " ".join(parts[4:])
                answers.append(data.replace('"', "") if parts[3] == "TXT" else data.lower())
    return Lookup(sorted(answers), failed=rcode is None or rcode.group(1) != "NOERROR",
                  rcode=rcode.group(1) if rcode else "", flags=set(flags.group(1).split()) if flags else set(),
                  raw=out)


def _busybox(out: str, kind: str) -> Lookup:
    if "can't find" in out or "NXDOMAIN" in out:
        return Lookup([], failed=True, raw=out)
    answers = []
    for line in out.splitlines():
        m = re.match(r"Address:\s+(\S+)$", line.strip())
        if m and not m.group(1).endswith(":53"):  # the server's own line
            answers.append(m.group(1))
    return Lookup(sorted(set(answers)), failed=not answers, raw=out)


def _reverse_name(address: str) -> str:
    import ipaddress
    return ipaddress.ip_address(address).reverse_pointer + "."


def _dig(tool: str):
    def argv(kind, name, server, options=()):
        if kind == "ptr":
            name = _reverse_name(name)
        if tool == "drill":  # drill: -t for TCP; no EDNS unless asked
            return ["drill", *options, name, f"@{server}", DIG_TYPES[kind]]
        retries = "+tries=1" if tool == "dig" else "+retry=0"
        return [tool, *options, f"@{server}", name, DIG_TYPES[kind], retries, "+time=3"]
    return argv


def clients(build_dir: Path) -> list[Client]:
    """Every client, built into ``build_dir`` where it needs building."""
    py = sys.executable
    return [
        Client("glibc", True, frozenset({"addr"}), lambda k, n, s, o=(): ["getent", "ahosts", n],
               lambda out, kind: Lookup(sorted({ln.split()[0] for ln in out.splitlines() if ln.split()}),
                                        failed=not out.strip(), raw=out), needs=("getent",)),
        Client("musl", True, frozenset({"addr", "a", "aaaa", "srv", "txt", "ptr", "cname"}),
               lambda k, n, s, o=(): [str(build_dir / "lookup-musl"), k, _reverse_name(n) if k == "ptr" else n],
               _stub, needs=(str(build_dir / "lookup-musl"),)),
        # (Go's LookupCNAME gives the end of the chain, the canonical name, not the CNAME record: not asked)
        Client("go", True, frozenset({"addr", "a", "aaaa", "srv", "txt", "ptr"}),
               lambda k, n, s, o=(): [str(build_dir / "lookup-go"), k, n], _stub,
               needs=(str(build_dir / "lookup-go"),), env={"GODEBUG": "netdns=go"}),
        Client("c-ares", False, frozenset({"addr", "a", "aaaa", "srv", "txt", "ptr", "cname"}),
               lambda k, n, s, o=(): ["node", str(HERE / "lookup.js"), k, n], _stub, needs=("node",)),
        Client("dnspython", True, frozenset({"addr", "a", "aaaa", "srv", "txt", "ptr", "cname"}),
               lambda k, n, s, o=(): [py, str(HERE / "lookup_dnspython.py"), k, n], _stub),
        Client("dig", False, frozenset({"a", "aaaa", "srv", "txt", "ptr", "cname"}), _dig("dig"), _presentation,
               needs=("dig",)),
        Client("kdig", False, frozenset({"a", "aaaa", "srv", "txt", "ptr", "cname"}), _dig("kdig"), _presentation,
               needs=("kdig",)),
        Client("drill", False, frozenset({"a", "aaaa", "srv", "txt", "ptr", "cname"}), _dig("drill"), _presentation,
               needs=("drill",)),
        Client("busybox", False, frozenset({"addr"}),
               lambda k, n, s, o=(): ["busybox", "nslookup", n, s], _busybox, needs=("busybox",)),
    ]


def build(build_dir: Path) -> dict[str, str]:
    """Build the C and Go clients; returns {client: why it could not be built}."""
    why = {}
    build_dir.mkdir(parents=True, exist_ok=True)
    if shutil.which("musl-gcc"):
        r = subprocess.run(["musl-gcc", "-static", "-O1", "-o", str(build_dir / "lookup-musl"), str(HERE / "lookup.c")],
                           capture_output=True, text=True, timeout=120)
        if r.returncode:
            why["musl"] = f"musl-gcc failed: {r.stderr.strip()[:500]}"
    if shutil.which("go"):
        env = dict(os.environ, GOCACHE=str(build_dir / "gocache"), GOPATH=str(build_dir / "gopath"),
                   GO111MODULE="off", CGO_ENABLED="0", GOFLAGS="")
        r = subprocess.run(["go", "build", "-o", str(build_dir / "lookup-go"), str(HERE / "lookup.go")],
                           capture_output=True, text=True, timeout=300, env=env)
        if r.returncode:
            why["go"] = f"go build failed: {r.stderr.strip()[:500]}"
    return why
