"""The shared reader contract, on a toy one-byte-length message (the codecs test their own parsers)."""

from __future__ import annotations

import pytest

from tungo_sidecar.proto.reader import MessageReader


class _LengthPrefixed(MessageReader[bytes]):
    _protocol = "toy"

    def _parse(self, buf: bytearray) -> tuple[bytes, int] | None:
        if not buf or len(buf) < 1 + buf[0]:
            return None
        return bytes(buf[1 : 1 + buf[0]]), 1 + buf[0]


def test_message_arrives_byte_by_byte_and_what_follows_is_kept() -> None:
    reader = _LengthPrefixed()
    results = [reader.feed(bytes([b])) for b in b"\x03abcEARLY"[:4]]
    assert results == [None, None, None, b"abc"]
    assert reader.done and reader.buffered == 0 and reader.leftover == b""

    reader = _LengthPrefixed()
    assert reader.feed(b"\x02a") is None and reader.buffered == 2 and not reader.done
    assert reader.feed(b"bEARLY") == b"ab"
    assert reader.leftover == b"EARLY" and reader.buffered == 0


def test_feeding_after_the_message_is_a_programming_error() -> None:
    reader = _LengthPrefixed()
    assert reader.feed(b"\x00") == b""
    with pytest.raises(RuntimeError, match=r"^toy: _LengthPrefixed already parsed its message"):
        reader.feed(b"x")
    assert reader.leftover == b""
