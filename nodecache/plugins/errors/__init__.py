"""The ``errors`` plugin (README.md beside this file)."""
from ..plugin import Plugin
from .stage import ErrorsStage
from .setup import setup

PLUGIN = Plugin("errors", setup, lambda cfg, b: ErrorsStage(), "log failures further down the chain",
                support="differs", note="no consolidate or stacktrace options")
