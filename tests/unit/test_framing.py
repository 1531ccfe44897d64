import pytest

from nodecache.dns.framing import FrameReader, FrameTooLarge, frame


def test_every_split_point():
    msgs = [b"a" * 20, b"b" * 300, b"", b"c" * 12]
    stream = b"".join(frame(m) for m in msgs)
    for cut in range(len(stream) + 1):
        r = FrameReader()
        assert r.feed(stream[:cut]) + r.feed(stream[cut:]) == msgs
        assert r.pending == 0


def test_byte_by_byte():
    r = FrameReader()
    out = []
    for b in frame(b"hello") + frame(b"world"):
        out += r.feed(bytes([b]))
    assert out == [b"hello", b"world"]


def test_oversized_frame_rejected_before_data_arrives():
    r = FrameReader(max_size=100)
    with pytest.raises(FrameTooLarge):
        r.feed(b"\x00\x65")
