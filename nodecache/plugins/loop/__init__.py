"""The ``loop`` plugin (README.md beside this file)."""
from ..plugin import Plugin
from .setup import setup

PLUGIN = Plugin("loop", setup, summary="detect a forwarding loop at start (see detector)",
                support="differs", note="a looped zone answers SERVFAIL and is degraded instead of the process exiting")
