"""dnspython's stub resolver (what Python services use for anything beyond
getaddrinfo): /etc/resolv.conf, the search list (search=True), TCP after a
truncated reply. Prints one answer per line, or "ERR ..." and exits 3."""
import sys

import dns.exception
import dns.resolver
import dns.reversename

TYPES = {"a": ["A"], "aaaa": ["AAAA"], "addr": ["A", "AAAA"], "srv": ["SRV"], "txt": ["TXT"], "ptr": ["PTR"],
         "cname": ["CNAME"]}


def text(rdata) -> str:
    if rdata.rdtype == dns.rdatatype.TXT:
        return b"".join(rdata.strings).decode()
    return rdata.to_text()


def main(kind: str, name: str) -> int:
    resolver = dns.resolver.Resolver()
    if kind == "ptr":
        name = dns.reversename.from_address(name).to_text()
    out = []
    for rdtype in TYPES[kind]:
        try:
            answer = resolver.resolve(name, rdtype, search=True, lifetime=4)
        except dns.resolver.NoAnswer:
            continue
        except dns.exception.DNSException as exc:
            print(f"ERR {type(exc).__name__}")
            return 3
        out += [text(r) for r in answer]
    if not out:
        print("ERR NoAnswer")
        return 3
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
