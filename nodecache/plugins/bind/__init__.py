"""The ``bind`` plugin (README.md beside this file)."""
from ..plugin import Plugin
from .setup import setup

PLUGIN = Plugin("bind", setup, summary="the addresses a server block listens on",
                support="differs", note="addresses only: no interface names, no except")
