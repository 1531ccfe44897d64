"""The ``pprof`` directive: accepted and ignored (README.md beside this file)."""
from ..plugin import Plugin
from .setup import setup

PLUGIN = Plugin("pprof", setup, summary="accepted and ignored with a warning: cannot serve Go's pprof profiles")
