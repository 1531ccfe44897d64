"""The ``trace`` directive: accepted and ignored (README.md beside this file)."""
from ..plugin import Plugin
from .setup import setup

PLUGIN = Plugin("trace", setup, summary="accepted and ignored with a warning: cannot export traces")
