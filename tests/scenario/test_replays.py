"""Every replay scenario in tests/scenario/replays (format: replay.py)."""
from pathlib import Path

import pytest

from replay import parse, play, scenarios

REPLAYS = Path(__file__).parent / "replays"


@pytest.mark.parametrize("path", scenarios(REPLAYS), ids=lambda p: p.stem)
async def test_replay(path):
    await play(path)


def test_every_replay_says_what_it_shows():
    assert scenarios(REPLAYS), "no replay scenarios found"
    for path in scenarios(REPLAYS):
        assert parse(path).title, f"{path.name}: no SCENARIO line"
