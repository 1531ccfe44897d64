"""The ``pprof`` directive: accepted and ignored (README.md beside this file)."""
from ..plugin import Plugin, ignored

setup = ignored("pprof", "serve Go's pprof profiles")

PLUGIN = Plugin("pprof", setup, summary="accepted and ignored with a warning: cannot serve Go's pprof profiles",
                support="ignored", note="no Go profiles; profile from outside with py-spy")
