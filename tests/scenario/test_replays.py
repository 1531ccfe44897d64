"""Every replay scenario in tests/scenario/replays (format: replay.py)."""
from pathlib import Path

import pytest

from nodecache.server import mmsg
from nodecache_lab.replay import READS, SHORTCUTS, parse, play, scenarios

REPLAYS = Path(__file__).parent / "replays"


@pytest.mark.parametrize("reads", READS)
@pytest.mark.parametrize("shortcuts", SHORTCUTS)
@pytest.mark.parametrize("path", scenarios(REPLAYS), ids=lambda p: p.stem)
async def test_replay(path, shortcuts, reads):
    """Every scenario with every set of shortcuts (down to none: the stage
    chain for every query) and every UDP read mode (coalescing polls
    included): the same replies, the same upstream traffic."""
    if reads != "single" and not mmsg.available():
        pytest.skip("recvmmsg/sendmmsg not available here")
    await play(path, shortcuts, reads)


def test_every_replay_says_what_it_shows():
    assert scenarios(REPLAYS), "no replay scenarios found"
    for path in scenarios(REPLAYS):
        assert parse(path).title, f"{path.name}: no SCENARIO line"
