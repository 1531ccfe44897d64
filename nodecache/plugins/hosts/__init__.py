"""The ``hosts`` plugin (README.md beside this file)."""
from ..plugin import Plugin
from .setup import setup
from .stage import HostsStage

PLUGIN = Plugin("hosts", setup, lambda cfg, b: HostsStage(cfg, b.zones, b.clock),
                "answer A, AAAA and PTR from a hosts file and inline entries",
                support="differs", note="answers not cached; the file is checked for changes on queries")
