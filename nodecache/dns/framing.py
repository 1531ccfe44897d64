"""DNS over TCP framing (RFC 1035 §4.2.2, RFC 7766 §8): a 2-byte length then
the message. A pure reassembly buffer: feed it whatever bytes arrived, get
back the complete messages. No I/O, so every split point is testable.
"""
from __future__ import annotations


class FrameTooLarge(ValueError):
    pass


class FrameReader:
    """Splits a byte stream into DNS messages.

    ``max_size`` bounds one message: a query larger than any real query is
    a broken or hostile peer, and the caller closes the connection.
    """

    __slots__ = ("_buf", "max_size")

    def __init__(self, max_size: int = 65535):
        self._buf = bytearray()
        self.max_size = max_size

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out = []
        pos = 0
        while len(buf) - pos >= 2:
            size = buf[pos] << 8 | buf[pos + 1]
            if size > self.max_size:
                raise FrameTooLarge(f"frame of {size} bytes exceeds {self.max_size}")
            if len(buf) - pos - 2 < size:
                break
            out.append(bytes(buf[pos + 2:pos + 2 + size]))
            pos += 2 + size
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)


def frame(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message
