"""The ``template`` plugin (README.md beside this file)."""
from ..plugin import Plugin
from .setup import setup
from .stage import TemplateStage

PLUGIN = Plugin("template", setup, lambda cfgs, b: TemplateStage(cfgs, b.zones),
                "answers written as templates (CoreDNS's template)", repeatable=True,
                support="differs", note="functions index and parseInt only; no .Meta; answers not cached")
