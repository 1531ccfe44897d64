"""Logs cannot be forged by query names, nor flooded by failing queries."""
from nodecache_lab.fakes import FakeClock
from nodecache.dns.wire import decode_name, encode_name
from nodecache.plugins.errors.stage import Throttle


def test_names_are_logged_in_escaped_presentation_form():
    assert decode_name(encode_name("www.example.com")) == "www.example.com."
    assert decode_name(b"\x07ev\nil\x1b[\x03a.b\x00") == "ev\\010il\\027[.a\\046b."
    assert decode_name(b"\x02\xc3\xbc\x00") == "\\195\\188."
    assert "\n" not in decode_name(bytes([10]) + b"\n" * 10 + b"\x00")


def test_error_log_is_throttled_and_says_what_it_held_back():
    clock = FakeClock()
    t = Throttle(burst=20, rate=5, clock=clock)
    written = [t.allow() for _ in range(1000)]
    assert sum(ok for ok, _ in written) == 20  # a flood: the burst, then nothing
    clock.advance(1.0)
    first = t.allow()
    assert first == (True, 980)  # the next line says how many were held back
    assert sum(t.allow()[0] for _ in range(100)) == 4  # then 5 a second
