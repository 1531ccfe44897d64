"""The ``debug`` directive: accepted and ignored (README.md beside this file)."""
from ..plugin import Plugin, ignored

setup = ignored("debug", "turn off panic recovery")

PLUGIN = Plugin("debug", setup, summary="accepted and ignored with a warning: cannot turn off panic recovery",
                support="ignored", note="failures are always contained to their query (SERVFAIL, coredns_panics_total)")
