"""The ``rewrite`` plugin (README.md beside this file)."""
from ..plugin import Plugin
from .setup import setup
from .stage import RewriteStage

PLUGIN = Plugin("rewrite", setup, lambda rules, b: RewriteStage(rules),
                "rewrite a query's name, type or class, and the reply back", repeatable=True,
                support="differs", note="name, type, class and ttl rules only (no edns0, cname, rcode, block form)")
