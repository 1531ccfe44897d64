"""Cache snapshots: entries to bytes and back, for the hot handoff and for
saving the cache across a restart. Pure functions, versioned format.

Layout: ``MAGIC`` (4 bytes, carries the format), then records. A record is
a block id (the server block's zones and port, so entries return to the
block that serves the same zones) followed by its entries. Each entry
stores what ``Entry`` needs, with *relative* times: how old it is and how
long it has left (in milliseconds), so the receiver's clock, which need
not match ours, places it correctly. Everything is length-prefixed.

Format 2 wraps the records in frames (u32 length, u32 CRC-32, records; a
record never spans frames), so a flipped bit anywhere is found before any
entry of that frame is used: a cache file on a bad disk is not served as
answers. Format 1 (no frames) is still read and written, for a heir of an
older release (the handoff negotiates the format).

``decode`` has one guard: whatever the bytes (truncated, garbled, hostile),
it returns entries or raises ``SnapshotError``, never another exception,
so a bad cache file means a cold start, not a crash loop.
"""
from __future__ import annotations

import struct
import zlib
from typing import Iterable, Iterator

from ..dns.key import question
from ..dns.wire import servable_key
from ..dns.reply import Reply
from .entry import Entry

MAGIC = b"NCS\x01"
MAGIC2 = b"NCS\x02"
FORMATS = (1, 2)  # snapshot formats this release reads and writes (MAGIC's last byte)
_FRAME = struct.Struct("!II")  # length, CRC-32 of the records that follow


def negotiate(offered) -> int | None:
    """The highest snapshot format both sides speak, or None (then the heir
    takes the sockets and starts with a cold cache)."""
    try:
        shared = set(FORMATS) & {int(f) for f in offered}
    except (TypeError, ValueError):
        return None
    return max(shared, default=None)
_ENTRY = struct.Struct("!BHHHHIII")  # kind flags an ns ar age_ms remaining_ms ttl
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class SnapshotError(ValueError):
    pass


def encode_entry(entry: Entry, now: float) -> bytes:
    age = max(0, int((now - entry.stored) * 1000))
    remaining = int((entry.expires - now) * 1000)
    an, ns, ar = entry.shape.counts
    parts = [_U16.pack(len(entry.key)), entry.key,
             _ENTRY.pack(entry.kind, entry.flags, an, ns, ar, min(age, 2**32 - 1),
                         remaining & 0xFFFFFFFF, entry.ttl),
             _U16.pack(len(entry.offsets)),
             b"".join(_U16.pack(o) for o in entry.offsets),
             b"".join(_U32.pack(t) for t in entry.ttls),
             _U32.pack(len(entry.tail)), entry.tail]
    return b"".join(parts)


def encode(blocks: Iterable[tuple[str, list[Entry]]], now: float, chunk: int = 60000,
           fmt: int = 2) -> Iterator[bytes]:
    """Yield the snapshot in chunks of about ``chunk`` bytes (the first one
    starts with the format's magic). A block id record is ``B`` + u16 length
    + id, an entry record ``E`` + the entry; in format 2 each chunk is one
    checksummed frame."""
    if fmt not in FORMATS:
        raise ValueError(f"snapshot format {fmt} is not one of {FORMATS}")
    head = MAGIC2 if fmt == 2 else MAGIC
    buf = bytearray()

    def emit() -> bytes:
        nonlocal head
        out = head + (_FRAME.pack(len(buf), zlib.crc32(buf)) + buf if fmt == 2 else buf)
        head = b""
        buf.clear()
        return bytes(out)
    for block_id, entries in blocks:
        raw = block_id.encode()
        buf += b"B" + _U16.pack(len(raw)) + raw
        for entry in entries:
            buf += b"E" + encode_entry(entry, now)
            if len(buf) >= chunk:
                yield emit()
    yield emit()


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise SnapshotError("snapshot truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u16(self) -> int:
        return _U16.unpack(self.take(2))[0]

    def u32(self) -> int:
        return _U32.unpack(self.take(4))[0]


def decode(data: bytes, now: float) -> dict[str, list[Entry]]:
    """Entries by block id, recreated against the local clock ``now``.
    Raises SnapshotError for anything but a well-formed snapshot."""
    try:
        if data.startswith(MAGIC2):
            return _records(_frames(data), now)
        if data.startswith(MAGIC):
            return _records([memoryview(data)[len(MAGIC):]], now)
    except SnapshotError:
        raise
    except (struct.error, ValueError, OverflowError, IndexError, TypeError, MemoryError) as exc:
        raise SnapshotError(f"garbled snapshot: {type(exc).__name__}: {exc}") from exc
    raise SnapshotError("not a nodecache snapshot of a format this release reads")


def _frames(data: bytes) -> list[memoryview]:
    view, pos, out = memoryview(data), len(MAGIC2), []
    while pos < len(data):
        if pos + _FRAME.size > len(data):
            raise SnapshotError("snapshot truncated in a frame header")
        length, crc = _FRAME.unpack_from(data, pos)
        pos += _FRAME.size
        frame = view[pos:pos + length]
        if len(frame) != length:
            raise SnapshotError("snapshot truncated in a frame")
        if zlib.crc32(frame) != crc:
            raise SnapshotError(f"snapshot frame at byte {pos} fails its checksum")
        out.append(frame)
        pos += length
    return out


def _records(frames, now: float) -> dict[str, list[Entry]]:
    out: dict[str, list[Entry]] = {}
    current: list[Entry] | None = None
    for frame in frames:
        r = _Reader(bytes(frame))
        while r.pos < len(r.data):
            tag = r.take(1)
            if tag == b"B":
                try:
                    block_id = r.take(r.u16()).decode()
                except UnicodeDecodeError as exc:
                    raise SnapshotError("garbled block id") from exc
                current = out.setdefault(block_id, [])
            elif tag == b"E" and current is not None:
                entry = _decode_entry(r, now)
                if servable_key(entry.key):  # (a donor may have cached what we refuse: never served here)
                    current.append(entry)
            else:
                raise SnapshotError(f"garbled snapshot at byte {r.pos - 1}")
    return out


def _decode_entry(r: _Reader, now: float) -> Entry:
    key = r.take(r.u16())
    kind, flags, an, ns, ar, age_ms, remaining_ms, ttl = _ENTRY.unpack(r.take(_ENTRY.size))
    if remaining_ms & 0x80000000:
        remaining_ms -= 2**32  # expired (stale) entries have negative time left
    n = r.u16()
    offsets = struct.unpack(f"!{n}H", r.take(2 * n))
    ttls = struct.unpack(f"!{n}I", r.take(4 * n))
    tail = r.take(r.u32())
    if (kind > 2 or any(o + 4 > len(tail) for o in offsets) or len(key) < 6 or ttl > 0x7FFFFFFF
            or an + ns + ar != n or ar >= 0xFFFF):  # every record has its TTL offset; room for our OPT
        raise SnapshotError("inconsistent entry")
    reply = Reply(flags, flags & 0xF, question(key), 0, (an, ns, ar), tail, offsets, ttls, None, None)
    stored = now - age_ms / 1000
    entry = Entry(key, reply, kind, ttl, stored)
    entry.expires = now + remaining_ms / 1000
    return entry


FILE_MAGIC = b"NCF\x01"


def save(path: str, blocks, now: float, wall: float) -> int:
    """Write a snapshot file atomically (temporary file, fsync, rename).
    Returns bytes written. Raises OSError (full disk...) leaving any older
    file intact."""
    import os
    import struct as _s
    tmp = f"{path}.tmp.{os.getpid()}"
    data = FILE_MAGIC + _s.pack("!d", wall) + b"".join(encode(blocks, now))
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return len(data)


def load(path: str, now: float, wall: float) -> dict[str, list[Entry]]:
    """Read a snapshot file; entries age by the wall time since it was saved."""
    import struct as _s
    with open(path, "rb") as fh:
        data = fh.read()
    if not data.startswith(FILE_MAGIC) or len(data) < 12:
        raise SnapshotError(f"{path} is not a nodecache cache file of this version")
    saved = _s.unpack("!d", data[4:12])[0]
    elapsed = max(0.0, wall - saved)
    return decode(data[12:], now - elapsed)
