"""Real DNS-over-TLS and DNS-over-HTTPS servers on loopback, for the TLS
upstream tests and the miss benchmark: Debian's unbound (``tls-port``,
``https-port``) and dnsdist (``addTLSLocal``, ``addDOHLocal``), with
certificates made here by ``openssl`` (no network, nothing installed
system-wide).

``make_pki`` writes a CA and, signed by it: the server's certificate
(``dns.test`` and ``127.0.0.1``), one for another name only, an expired
one, and a client certificate. ``tls_servers`` starts unbound and dnsdist
serving a few names over DoT and DoH (and plain DNS), with rcodes chosen
per name so ``next`` and ``failover`` can be seen:

=============  =======================  =========================
name           unbound                  dnsdist
=============  =======================  =========================
``a.test``     A 169.254.1.1            A 169.254.2.2
``fail.test``  A 169.254.1.1            SERVFAIL
``nx.test``    A 169.254.1.1            NXDOMAIN
``*.refused.test``  REFUSED             A 169.254.2.2
anything else  NXDOMAIN (static ``.``)  A 169.254.2.2
AAAA           NODATA where A exists    AAAA fd00::2:2
=============  =======================  =========================

unbound's root is a static local zone, so it never recurses: nothing
leaves the machine (the network safety rule).
"""
from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

SERVER_NAME = "dns.test"


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path          # dns.test, IP 127.0.0.1
    key: Path
    wrong_cert: Path    # other.test only
    expired_cert: Path  # dns.test, expired
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _signed(tmp: Path, name: str, san: str, days: int, serial: int) -> tuple[Path, Path]:
    key, csr, cert, ext = (tmp / f"{name}.key", tmp / f"{name}.csr", tmp / f"{name}.pem", tmp / f"{name}.ext")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key.name,
             "-out", csr.name, "-subj", f"/CN={name}", cwd=tmp)
    ext.write_text(f"subjectAltName={san}\n" if san else "extendedKeyUsage=clientAuth\n")
    # -days 0: valid for no time at all, expired a second later
    _openssl("x509", "-req", "-in", csr.name, "-CA", "ca.pem", "-CAkey", "ca.key", "-set_serial", str(serial),
             "-days", str(days), "-out", cert.name, "-extfile", ext.name, cwd=tmp)
    return cert, key


def make_pki(tmp: Path) -> Pki:
    """A CA and the certificates the tests need (P-256 keys: fast to make)."""
    tmp.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
             "-out", "ca.pem", "-days", "30", "-subj", "/CN=nodecache test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign", cwd=tmp)
    cert, key = _signed(tmp, "server", f"DNS:{SERVER_NAME},IP:127.0.0.1", 30, 2)
    wrong, _ = _signed(tmp, "other", "DNS:other.test", 30, 3)
    expired, _ = _signed(tmp, "expired", f"DNS:{SERVER_NAME},IP:127.0.0.1", 0, 4)
    client, client_key = _signed(tmp, "client", "", 30, 5)
    return Pki(tmp / "ca.pem", cert, key, wrong, expired, client, client_key)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unbound_tls_lines(tls_port: int, https_port: int, cert: Path, key: Path) -> str:
    """unbound.conf ``server:`` lines serving DoT on tls_port and DoH on https_port."""
    return textwrap.indent(textwrap.dedent(f"""\
        interface: 127.0.0.1@{tls_port}
        interface: 127.0.0.1@{https_port}
        tls-port: {tls_port}
        https-port: {https_port}
        tls-service-key: "{key}"
        tls-service-pem: "{cert}"
        incoming-num-tcp: 256
        """), "    ")


TEST_DATA = """\
    local-zone: "." static
    local-data: "a.test. 300 IN A 169.254.1.1"
    local-data: "fail.test. 300 IN A 169.254.1.1"
    local-data: "nx.test. 300 IN A 169.254.1.1"
    local-zone: "refused.test." refuse
"""


def redirect_data(zone: str, ttl: int = 3600) -> str:
    """unbound.conf lines answering every name under ``zone`` (A and AAAA),
    and nothing else (a static root: no recursion)."""
    return (f'    local-zone: "." static\n    local-zone: "{zone}" redirect\n'
            f'    local-data: "{zone} {ttl} IN A 169.254.1.1"\n    local-data: "{zone} {ttl} IN AAAA fd00::1"\n')


def unbound_one_thread(tmp: Path, name: str, port: int, server_extra: str, tail: str = "") -> Path:
    """One-thread unbound on 127.0.0.1:port; ``server_extra`` and ``tail`` are
    config lines (indented as unbound wants them) for the role it plays."""
    conf = tmp / name
    conf.write_text(textwrap.dedent(f"""\
        server:
            interface: 127.0.0.1@{port}
            do-daemonize: no
            use-syslog: no
            chroot: ""
            username: ""
            pidfile: ""
            directory: "{tmp}"
            num-threads: 1
            access-control: 127.0.0.0/8 allow
            module-config: "iterator"
            verbosity: 0
        """) + server_extra + tail)
    return conf


def unbound_conf(tmp: Path, ports: dict, cert: Path, key: Path, data: str = TEST_DATA) -> Path:
    """unbound serving ``data`` over DNS on ports["dns"], DoT and DoH."""
    return unbound_one_thread(tmp, f"unbound-tls-{ports['tls']}.conf", ports["dns"],
                              data + unbound_tls_lines(ports["tls"], ports["https"], cert, key))


def unbound_server(tmp: Path, pki: Pki, data: str, cpus: set[int] | None = None) -> Server:
    """unbound serving ``data`` over DNS, DoT and DoH (not started)."""
    ports = {"dns": free_port(), "tls": free_port(), "https": free_port()}
    argv = [shutil.which("unbound"), "-d", "-c", str(unbound_conf(tmp, ports, pki.cert, pki.key, data))]
    if cpus:
        argv = ["taskset", "-c", ",".join(map(str, sorted(cpus)))] + argv
    return Server("unbound", argv, ports, tmp / f"unbound-{ports['tls']}.log")


def dnsdist_conf(tmp: Path, ports: dict, cert: Path, key: Path) -> Path:
    conf = tmp / "dnsdist-tls.conf"
    conf.write_text(textwrap.dedent(f"""\
        setSecurityPollSuffix("")
        setLocal("127.0.0.1:{ports['dns']}")
        addTLSLocal("127.0.0.1:{ports['tls']}", "{cert}", "{key}")
        addDOHLocal("127.0.0.1:{ports['https']}", "{cert}", "{key}", "/dns-query")
        addAction(QNameRule("fail.test."), RCodeAction(DNSRCode.SERVFAIL))
        addAction(QNameRule("nx.test."), RCodeAction(DNSRCode.NXDOMAIN))
        addAction(AllRule(), SpoofAction({{"169.254.2.2", "fd00::2:2"}}))
        """))
    return conf


class Server:
    """A real server process and its ports (dns, tls, https); restartable."""

    def __init__(self, name: str, argv: list[str], ports: dict, log: Path):
        self.name, self.argv, self.ports, self.log = name, argv, ports, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        _wait_listening(self)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _wait_listening(server: Server, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited: {server.log.read_text()[-800:]}")
        try:
            with socket.create_connection(("127.0.0.1", server.ports["tls"]), timeout=0.2), \
                    socket.create_connection(("127.0.0.1", server.ports["https"]), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{server.name} is not listening after {timeout:g}s: {server.log.read_text()[-800:]}")


def missing() -> str:
    """Why the real TLS servers cannot run here ("" when they can)."""
    absent = [tool for tool in ("openssl", "unbound", "dnsdist") if shutil.which(tool) is None]
    return f"needs {', '.join(absent)} (scripts/system-deps.sh installs them)" if absent else ""


@contextlib.contextmanager
def tls_servers(tmp: Path, pki: Pki | None = None, cert: Path | None = None, key: Path | None = None):
    """unbound and dnsdist serving DoT and DoH with ``cert``/``key`` (by
    default the PKI's good ones): yields {"unbound": Server, "dnsdist": Server}."""
    pki = pki or make_pki(tmp / "pki")
    cert, key = cert or pki.cert, key or pki.key
    servers = {}
    try:
        for name, conf, argv in (
                ("unbound", unbound_conf, lambda c: [shutil.which("unbound"), "-d", "-c", str(c)]),
                ("dnsdist", dnsdist_conf,
                 lambda c: [shutil.which("dnsdist"), "--supervised", "--disable-syslog", "-C", str(c)])):
            ports = {"dns": free_port(), "tls": free_port(), "https": free_port()}
            server = servers[name] = Server(name, argv(conf(tmp, ports, cert, key)), ports, tmp / f"{name}.log")
            server.start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@dataclass(frozen=True)
class Encrypted:
    """How each cache in the miss benchmark forwards to an upstream serving
    DoT on ``tls_port`` and DoH on ``https_port`` (``proto``: tls or https),
    verified against the PKI's CA as ``dns.test``."""
    proto: str
    pki: Pki
    tls_port: int
    https_port: int

    @property
    def port(self) -> int:
        return self.tls_port if self.proto == "tls" else self.https_port

    def upstream_lines(self) -> str:
        """The upstream unbound's ``server:`` lines serving both."""
        return unbound_tls_lines(self.tls_port, self.https_port, self.pki.cert, self.pki.key)

    def nodecache_forward(self) -> tuple[str, str]:
        """(TO, the forward block's lines) of nodecache's Corefile."""
        return (f"{self.proto}://127.0.0.1:{self.port}",
                f"tls {self.pki.ca}\n        tls_servername {SERVER_NAME}")

    def unbound_forward(self) -> tuple[str, str]:
        """(``server:`` lines, ``forward-zone:`` lines) of unbound forwarding
        over TLS (forward-tls-upstream: unbound has no DoH client)."""
        return (f"    tls-cert-bundle: \"{self.pki.ca}\"\n",
                f"    forward-addr: 127.0.0.1@{self.tls_port}#{SERVER_NAME}\n    forward-tls-upstream: yes\n")

    def dnsdist_server(self, check_name: str) -> str:
        """dnsdist's newServer{} over DoT or DoH (its outgoing DoH: dohPath)."""
        doh = ', dohPath="/dns-query"' if self.proto == "https" else ""
        return (f'newServer({{address="127.0.0.1:{self.port}", tls="openssl", subjectName="{SERVER_NAME}", '
                f'caStore="{self.pki.ca}", validateCertificates=true, checkName="{check_name}"{doh}}})')
