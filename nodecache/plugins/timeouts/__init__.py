"""The ``timeouts`` plugin (README.md beside this file): no stage; the
listener serving the block takes its TCP idle timeout from it
(``server.agent``)."""
from ..plugin import Plugin
from .setup import setup

PLUGIN = Plugin("timeouts", setup, summary="the TCP server's timeouts",
                support="differs", note="one TCP timer per connection: the smallest of read, write and idle")
