"""HTTPS for the metrics endpoint (node-cache's ``-tls-*`` flags, as its
metrics server and CoreDNS's prometheus plugin take them): a server
certificate and key, optional client certificates, a minimum version.

Go's five client-auth types map onto what Python's ``ssl`` can do:
``NoClientCert`` asks for none; ``RequestClientCert`` and
``VerifyClientCertIfGiven`` ask for one and verify it if given
(``CERT_OPTIONAL``); ``RequireAnyClientCert`` and
``RequireAndVerifyClientCert`` require a verified one (``CERT_REQUIRED``).
Python always verifies a certificate it is given against the CA file, so
the two "any" variants are stricter than Go's; they need ``-tls-client-ca-file``.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass

CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "RequestClientCert": ssl.CERT_OPTIONAL,
               "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL, "RequireAnyClientCert": ssl.CERT_REQUIRED,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
VERSIONS = {"10": ssl.TLSVersion.TLSv1, "11": ssl.TLSVersion.TLSv1_1, "12": ssl.TLSVersion.TLSv1_2,
            "13": ssl.TLSVersion.TLSv1_3}


class TlsError(ValueError):
    pass


def min_version(text: str) -> ssl.TLSVersion:
    """``VersionTLS13``, ``TLS13``, ``1.3`` or ``13`` -> the version."""
    key = text.replace("VersionTLS", "").replace("TLS", "").replace(".", "")
    key = {"1": "10"}.get(key, key)  # "1.0"
    if key not in VERSIONS:
        raise TlsError(f"-tls-min-version {text!r}: one of VersionTLS10, VersionTLS11, VersionTLS12, VersionTLS13")
    return VERSIONS[key]


@dataclass(frozen=True)
class MetricsTls:
    cert_file: str = "/etc/ssl/tls.crt"
    key_file: str = "/etc/ssl/tls.key"
    client_auth: str = "NoClientCert"
    client_ca_file: str = ""
    min_version: str = "VersionTLS13"

    def context(self) -> ssl.SSLContext:
        """The server context; raises TlsError naming the flag and file."""
        if self.client_auth not in CLIENT_AUTH:
            raise TlsError(f"-tls-client-auth-type {self.client_auth!r}: one of {', '.join(CLIENT_AUTH)}")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = min_version(self.min_version)
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(f"-tls-cert-file {self.cert_file} / -tls-private-key-file {self.key_file}: {exc}") from None
        ctx.verify_mode = CLIENT_AUTH[self.client_auth]
        if ctx.verify_mode != ssl.CERT_NONE:
            if not self.client_ca_file:
                raise TlsError(f"-tls-client-auth-type {self.client_auth} needs -tls-client-ca-file")
            try:
                ctx.load_verify_locations(self.client_ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise TlsError(f"-tls-client-ca-file {self.client_ca_file}: {exc}") from None
        return ctx
