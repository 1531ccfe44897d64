"""The ``log`` plugin (README.md beside this file)."""
from ..plugin import Plugin
from .stage import LogStage
from .setup import setup

PLUGIN = Plugin("log", setup, lambda cfg, b: LogStage(cfg), "log every query in CoreDNS's formats")
