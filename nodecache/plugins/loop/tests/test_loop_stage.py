"""The loop stage at the callback speed: its probe, and any query once the
block is down, never skip ``handle`` (an echo taken there would never be
counted); every other miss passes on to the forward stage."""
from __future__ import annotations

from nodecache.config.parse import parse_config
from nodecache.upstream import direct
from nodecache.server.block import Block

COREFILE = ".:53 {\n    cache 30\n    loop\n    forward . 127.0.0.1:53\n}\n"
OTHER = b"\x03www\x07example\x00\x00\x01\x00\x01\x00"


def _block() -> Block:
    (cfg,) = parse_config(COREFILE).blocks
    return Block(cfg)


def test_the_probe_takes_the_slow_path_and_other_misses_reach_the_forwarder(monkeypatch):
    started = []
    monkeypatch.setattr(direct, "start", lambda fwd, key, asker, on_done: started.append((key, on_done)) or True)
    block = _block()
    loop = next(st for st in block.stages if st.name == "loop")
    assert block.take(loop.detector.key, "asker", None) is False
    assert started == []
    assert block.take(OTHER, "asker", None) is True
    assert started == [(OTHER, block.cache_stage._taken)]  # the cache stage answers it when it ends


def test_a_block_that_went_down_takes_nothing_at_the_callback_speed(monkeypatch):
    started = []
    monkeypatch.setattr(direct, "start", lambda *a: started.append(a) or True)
    block = _block()
    loop = next(st for st in block.stages if st.name == "loop")
    take = block.take
    loop.go_down()
    assert block.down and block.take is None and block.front is None
    assert take(OTHER, "asker", None) is False and started == []  # (a path holding the old entry)
