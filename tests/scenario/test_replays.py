"""Every replay scenario in tests/scenario/replays (format: replay.py)."""
from pathlib import Path

import pytest

from nodecache.server import mmsg
from nodecache.testing.replay import parse, play, scenarios

REPLAYS = Path(__file__).parent / "replays"


@pytest.mark.parametrize("batched", [False, True], ids=["single", "batched"])
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "nodirect"])
@pytest.mark.parametrize("memo", [True, False], ids=["memo", "nomemo"])
@pytest.mark.parametrize("path", scenarios(REPLAYS), ids=lambda p: p.stem)
async def test_replay(path, memo, direct, batched):
    """Every scenario under every combination of the shortcuts and both
    UDP read modes: the same replies, the same upstream traffic."""
    if batched and not mmsg.available():
        pytest.skip("recvmmsg/sendmmsg not available here")
    await play(path, memo, direct, batched)


def test_every_replay_says_what_it_shows():
    assert scenarios(REPLAYS), "no replay scenarios found"
    for path in scenarios(REPLAYS):
        assert parse(path).title, f"{path.name}: no SCENARIO line"
