"""The ``timeouts`` plugin (README.md beside this file): no stage; the
listener serving the block takes its TCP idle timeout from it
(``server.agent``, through ``idle``)."""
from ..plugin import Plugin
from .setup import setup


def idle(blocks, default: float) -> float:
    """The TCP idle timeout of a listener serving ``blocks`` (their
    ``ServerBlock``s): the smallest the blocks' ``timeouts`` ask, else ``default``."""
    return min((b.option("timeouts").connection_idle(default) for b in blocks if b.has("timeouts")),
               default=default)

PLUGIN = Plugin("timeouts", setup, summary="the TCP server's timeouts",
                support="differs", note="one TCP timer per connection: the smallest of read, write and idle")
