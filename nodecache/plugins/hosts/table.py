"""A hosts(5) table: names to IPv4 and IPv6 addresses, addresses to names,
and the file it is read from.

``parse`` reads the file format (``IP NAME...``, ``#`` comments, a zone
index after ``%`` dropped, names case-insensitive and made absolute);
lines it cannot read are skipped, as CoreDNS and glibc skip them. It is
linear in the file: every set is a dict (insertion-ordered, file order
kept), so an ad-block list that puts 100,000 names on 0.0.0.0 costs what
100,000 distinct addresses cost (a list's ``in`` made it quadratic: 35 s
for 80,000 lines), and each distinct address text is parsed once.

``read_file`` takes only a regular file, at most ``MAX_BYTES`` of it: a
FIFO at the path would block a reader forever and ``/dev/zero`` never
ends. It opens without blocking and checks what it opened (no race
between a check and the open).
"""
from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass, field

MAX_BYTES = 64 << 20  # ~2 million lines of an ad-block list; a larger file is refused (the old table serves)


class HostsFileError(OSError):
    """The file cannot be used: its reason is the log line."""


@dataclass
class Table:
    v4: dict[str, dict[str, None]] = field(default_factory=dict)     # name -> addresses, in file order
    v6: dict[str, dict[str, None]] = field(default_factory=dict)
    names: dict[str, dict[str, None]] = field(default_factory=dict)  # address -> names (PTR)
    _canonical: dict[str, tuple[str, int]] = field(default_factory=dict, repr=False)

    def add(self, addr: str, names) -> None:
        """Raises ValueError for an address that is not one."""
        known = self._canonical.get(addr)
        if known is None:
            ip = ipaddress.ip_address(addr)
            known = self._canonical[addr] = (str(ip), ip.version)
        text, version = known
        by_name = self.v4 if version == 4 else self.v6
        of_addr = self.names.setdefault(text, {})
        for name in names:
            name = name.lower().rstrip(".") + "."
            by_name.setdefault(name, {})[text] = None
            of_addr[name] = None

    def knows(self, name: str) -> bool:
        return name in self.v4 or name in self.v6


def parse(text: str, table: Table | None = None) -> Table:
    table = table or Table()
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            table.add(fields[0].split("%")[0], fields[1:])
        except ValueError:
            continue
    return table


def file_stamp(path: str) -> tuple[int, int]:
    """(mtime, size) of ``path``: what says it changed. Raises OSError."""
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size


def read_file(path: str, limit: int | None = None) -> tuple[tuple[int, int], str]:
    """(stamp, text) of a regular file of at most ``limit`` bytes (default
    MAX_BYTES); raises HostsFileError (or OSError) saying why not."""
    limit = MAX_BYTES if limit is None else limit
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode)
                    else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a file")
            raise HostsFileError(f"{kind}, not a regular file")
        if st.st_size > limit:
            raise HostsFileError(f"{st.st_size} bytes, more than the {limit} a hosts file may have")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > limit:  # grew while we read
                raise HostsFileError(f"more than the {limit} bytes a hosts file may have")
            chunks.append(chunk)
    finally:
        os.close(fd)
    return (st.st_mtime_ns, st.st_size), b"".join(chunks).decode("utf-8", errors="replace")


def address_of_reverse(name: str) -> str | None:
    """The address a reverse name (``4.3.2.1.in-addr.arpa.``, nibbles under
    ``ip6.arpa.``) stands for, else None."""
    labels = name.rstrip(".").split(".")
    try:
        if labels[-2:] == ["in-addr", "arpa"] and len(labels) == 6:
            return str(ipaddress.IPv4Address(".".join(reversed(labels[:4]))))
        if labels[-2:] == ["ip6", "arpa"] and len(labels) == 34:
            nibbles = "".join(reversed(labels[:32]))
            return str(ipaddress.IPv6Address(int(nibbles, 16)))
    except ValueError:
        return None
    return None
