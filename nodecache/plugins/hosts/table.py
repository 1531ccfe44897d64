"""A hosts(5) table: names to IPv4 and IPv6 addresses, addresses to names.

``parse`` reads the file format (``IP NAME...``, ``#`` comments, a zone
index after ``%`` dropped, names case-insensitive and made absolute);
lines it cannot read are skipped, as CoreDNS and glibc skip them.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


@dataclass
class Table:
    v4: dict[str, list[str]] = field(default_factory=dict)     # name -> addresses, in file order
    v6: dict[str, list[str]] = field(default_factory=dict)
    names: dict[str, list[str]] = field(default_factory=dict)  # address -> names (PTR)

    def add(self, addr: str, names) -> None:
        ip = ipaddress.ip_address(addr)
        by_name = self.v4 if ip.version == 4 else self.v6
        text = str(ip)
        for name in names:
            name = name.lower().rstrip(".") + "."
            if text not in by_name.setdefault(name, []):
                by_name[name].append(text)
            if name not in self.names.setdefault(text, []):
                self.names[text].append(name)

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
