"""The ``reload`` plugin (README.md beside this file)."""
from ..plugin import Plugin
from .setup import setup

PLUGIN = Plugin("reload", setup, summary="re-read the Corefile when it changes")
