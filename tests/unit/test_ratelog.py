"""Client-caused log lines: one per reason per interval, with a count."""
import logging

from nodecache.observe.ratelog import Throttle
from nodecache_lab.fakes import FakeClock


def test_one_line_per_reason_per_interval_then_the_count(caplog):
    clock = FakeClock()
    throttle = Throttle(logging.getLogger("t"), 60, clock)
    with caplog.at_level(logging.WARNING, logger="t"):
        written = [throttle.warning("a", "bad %s", i) for i in range(100)]
        assert throttle.warning("b", "other")
        clock.advance(61)
        assert throttle.warning("a", "bad again")
    assert written.count(True) == 1
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["bad 0", "other", "bad again (99 more like it in the last 61 s were not logged)"]
