"""A cluster DNS that implements the Kubernetes DNS specification
(kubernetes/dns docs/specification.md, schema 1.1.0) over a fixed set of
objects, as CoreDNS's ``kubernetes`` plugin answers it: the stand-in the
``k8s_schema`` stage is checked against.

Objects: namespaces ``default``, ``kube-system``, ``team-a``; per namespace
a ClusterIP Service ``web`` (port ``http``/tcp), a headless Service ``db``
with two endpoints named by hostname (``db-0``, ``db-1``; port ``pg``/tcp),
an ExternalName Service ``ext`` (a CNAME); in ``kube-system`` also
``kube-dns``. Pods: ``pods disabled|insecure|verified`` as CoreDNS's option
(verified: the IPs in ``PODS``). ``dns-version.<zone>`` TXT. One name the
cluster's CoreDNS serves through a rewrite (``CUSTOM``), outside the
schema. Every negative answer carries the zone's SOA (TTL and minimum
``negative_ttl``); an existing namespace, ``svc.<zone>``, ``pod.<zone>``
and ``_<proto>.<svc>.<ns>.svc.<zone>`` are empty non-terminals (NODATA).
Names outside the zone: ``INTERNET`` answers, NXDOMAIN for the rest (no
query ever leaves the test: this is data).
"""
from __future__ import annotations

import ipaddress

from dnslib import CNAME, QTYPE, RCODE, RR, SOA, SRV, TXT, A, DNSRecord, EDNS0

NAMESPACES = ("default", "kube-system", "team-a")
PODS = {("10.244.1.5", "default"), ("10.244.2.7", "team-a")}
CUSTOM = "custom.alias"            # + zone: served by the cluster's CoreDNS through rewrite
INTERNET = {"api.github.com.": "192.0.2.10", "github.com.": "192.0.2.11", "example.org.": "192.0.2.12",
            "registry.k8s.io.": "192.0.2.13"}


class SpecClusterDNS:
    def __init__(self, zone: str = "cluster.local.", pods: str = "insecure", ttl: int = 30, negative_ttl: int = 5):
        self.zone = zone.lower().rstrip(".") + "."
        self.pods, self.ttl, self.negative_ttl = pods, ttl, negative_ttl
        self.services: dict[tuple[str, str], dict] = {}
        for i, ns in enumerate(NAMESPACES):
            self.services[("web", ns)] = {"ip": f"10.96.{i}.10", "ports": [("http", "tcp", 80)]}
            self.services[("db", ns)] = {"endpoints": [("db-0", f"10.244.{i}.20"), ("db-1", f"10.244.{i}.21")],
                                         "ports": [("pg", "tcp", 5432)]}
            self.services[("ext", ns)] = {"external": "example.org.", "ports": []}
        self.services[("kube-dns", "kube-system")] = {"ip": "10.96.0.10", "ports": [("dns", "udp", 53),
                                                                                     ("dns-tcp", "tcp", 53)]}
        self.asked: list[str] = []

    def soa(self) -> RR:
        return RR(self.zone, QTYPE.SOA, ttl=self.negative_ttl, rdata=SOA(
            f"ns.dns.{self.zone}", f"hostmaster.{self.zone}", (1, 7200, 1800, 86400, self.negative_ttl)))

    def answer(self, data: bytes) -> bytes | None:
        try:
            req = DNSRecord.parse(data)
        except Exception:
            return None
        reply = req.reply(ra=1, aa=1)
        reply.header.ad = 0
        name, qtype = str(req.q.qname).lower(), req.q.qtype
        self.asked.append(name)
        if name == self.zone or name.endswith("." + self.zone):
            self._cluster(reply, name, qtype)
        elif name in INTERNET and qtype == QTYPE.A:
            reply.add_answer(RR(name, QTYPE.A, ttl=self.ttl, rdata=A(INTERNET[name])))
        elif name not in INTERNET:
            reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(RR(".", QTYPE.SOA, ttl=60, rdata=SOA("a.root-servers.net.", "nstld.verisign-grs.com.",
                                                                   (1, 1800, 900, 604800, 60))))
        opt = next((r for r in req.ar if r.rtype == QTYPE.OPT), None)
        if opt is not None:
            reply.add_ar(EDNS0(udp_len=1232, flags="do" if opt.ttl & 0x8000 else ""))
        return reply.pack()

    # -- the zone -------------------------------------------------------------
    def _cluster(self, reply, name: str, qtype: int) -> None:
        labels = name[:-len(self.zone)].rstrip(".").split(".") if name != self.zone else []
        records = self._records(labels, name, qtype)
        if records is None:
            reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(self.soa())
        elif not records:
            reply.add_auth(self.soa())  # NODATA
        else:
            for rr in records:
                reply.add_answer(rr)

    def _records(self, labels: list[str], name: str, qtype: int) -> list | None:
        """The records for ``name`` and ``qtype``: None when the name does
        not exist, [] when it does without that type."""
        if not labels:
            return [self.soa()] if qtype == QTYPE.SOA else []
        if labels == [CUSTOM.split(".")[0], CUSTOM.split(".")[1]]:
            return [RR(name, QTYPE.A, ttl=self.ttl, rdata=A("10.96.200.1"))] if qtype == QTYPE.A else []
        if labels == ["dns-version"]:
            return [RR(name, QTYPE.TXT, ttl=self.ttl, rdata=TXT("1.1.0"))] if qtype == QTYPE.TXT else []
        top, below = labels[-1], labels[:-1]
        if top == "svc":
            return self._svc(below, name, qtype)
        if top == "pod":
            return self._pod(below, name, qtype)
        return None

    def _svc(self, below: list[str], name: str, qtype: int) -> list | None:
        if not below:
            return []
        ns = below[-1]
        if ns not in NAMESPACES:
            return None
        if len(below) == 1:
            return []
        svc = self.services.get((below[-2], ns))
        if svc is None:
            return None
        target = f"{below[-2]}.{ns}.svc.{self.zone}"
        if len(below) == 2:
            return self._service(svc, name, qtype, target)
        if len(below) == 3:
            if below[0].startswith("_"):
                return [] if any(f"_{proto}" == below[0] for _, proto, _ in svc["ports"]) else None
            host = dict(svc.get("endpoints", ())).get(below[0])
            if host is None:
                return None
            return [RR(name, QTYPE.A, ttl=self.ttl, rdata=A(host))] if qtype == QTYPE.A else []
        if len(below) == 4:
            port = next((p for p in svc["ports"] if (f"_{p[0]}", f"_{p[1]}") == (below[0], below[1])), None)
            if port is None:
                return None
            if qtype != QTYPE.SRV:
                return []
            if "endpoints" in svc:
                return [RR(name, QTYPE.SRV, ttl=self.ttl, rdata=SRV(0, 50, port[2], f"{h}.{target}"))
                        for h, _ in svc["endpoints"]]
            return [RR(name, QTYPE.SRV, ttl=self.ttl, rdata=SRV(0, 100, port[2], target))]
        return None

    def _service(self, svc: dict, name: str, qtype: int, target: str) -> list:
        if "external" in svc:
            return [RR(name, QTYPE.CNAME, ttl=self.ttl, rdata=CNAME(svc["external"]))]
        if qtype == QTYPE.A:
            ips = [svc["ip"]] if "ip" in svc else [ip for _, ip in svc["endpoints"]]
            return [RR(name, QTYPE.A, ttl=self.ttl, rdata=A(ip)) for ip in ips]
        if qtype == QTYPE.SRV:
            out = []
            for port, _proto, number in svc["ports"]:
                if "endpoints" in svc:
                    out += [RR(name, QTYPE.SRV, ttl=self.ttl, rdata=SRV(0, 50, number, f"{h}.{target}"))
                            for h, _ in svc["endpoints"]]
                else:
                    out.append(RR(name, QTYPE.SRV, ttl=self.ttl, rdata=SRV(0, 100, number, target)))
            return out
        return []

    def _pod(self, below: list[str], name: str, qtype: int) -> list | None:
        if not below:
            return []
        if self.pods == "disabled" or len(below) > 2:
            return None
        ns = below[-1]
        if len(below) == 1:
            return [] if ns in NAMESPACES else None
        try:
            ip = str(ipaddress.IPv4Address(below[0].replace("-", ".")))
        except ValueError:
            return None
        if self.pods == "verified" and (ip, ns) not in PODS:
            return None
        return [RR(name, QTYPE.A, ttl=self.ttl, rdata=A(ip))] if qtype == QTYPE.A else []
