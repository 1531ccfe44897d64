"""The ``loadbalance`` plugin (README.md beside this file)."""
from ..plugin import Plugin
from .setup import setup
from .stage import LoadbalanceStage

PLUGIN = Plugin("loadbalance", setup, lambda cfg, b: LoadbalanceStage(),
                "shuffle A, AAAA and MX records in every answer",
                support="differs", note="round_robin only; the block's hits go through the chain")
