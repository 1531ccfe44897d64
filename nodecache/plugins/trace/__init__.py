"""The ``trace`` directive: accepted and ignored (README.md beside this file)."""
from ..plugin import Plugin, ignored

setup = ignored("trace", "export traces")

PLUGIN = Plugin("trace", setup, summary="accepted and ignored with a warning: cannot export traces",
                support="ignored", note="no tracing exporter; see coredns_dns_request_duration_seconds")
