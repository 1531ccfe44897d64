"""The ``whoami`` plugin (README.md beside this file)."""
from ..plugin import Plugin
from .setup import setup
from .stage import WhoamiStage

PLUGIN = Plugin("whoami", setup, lambda cfg, b: WhoamiStage(), "tell a client its address, port and transport")
