"""The ``loop`` plugin (README.md beside this file)."""
from ..plugin import Plugin
from .setup import setup
from .stage import LoopStage

PLUGIN = Plugin("loop", setup, lambda cfg, b: LoopStage(b.zones[0]),
                summary="detect a forwarding loop at start (see detector)",
                support="differs", note="a looped zone answers SERVFAIL and is degraded instead of the process exiting")
