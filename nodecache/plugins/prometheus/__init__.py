"""The ``prometheus`` plugin (README.md beside this file)."""
from ..plugin import Plugin
from .setup import setup

PLUGIN = Plugin("prometheus", setup, summary="/metrics in CoreDNS's names")
