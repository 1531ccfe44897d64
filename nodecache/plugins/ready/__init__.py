"""The ``ready`` plugin (README.md beside this file)."""
from ..plugin import Plugin
from .setup import setup

PLUGIN = Plugin("ready", setup, summary="/ready for readiness")
