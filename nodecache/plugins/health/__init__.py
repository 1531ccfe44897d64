"""The ``health`` plugin (README.md beside this file)."""
from ..plugin import Plugin
from .setup import setup

PLUGIN = Plugin("health", setup, summary="/health for liveness, with a lameduck on shutdown")
