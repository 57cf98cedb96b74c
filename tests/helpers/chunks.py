"""Feeding codecs the way a socket delivers bytes: cut anywhere, several messages or a tail per read.

``chunked`` cuts a byte string at hypothesis-chosen points; ``feed_until_done`` drives one
``proto.reader.MessageReader`` the way the handlers do (feed until the message is complete, keep
the rest), so every codec's chunking tests read the same.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import TypeVar

from tungo_sidecar.proto.reader import MessageReader

T = TypeVar("T")


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at each of ``cuts`` (taken modulo its length + 1; repeats and empty pieces allowed)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in itertools.pairwise([0, *points, len(data)])]


def feed_until_done(reader: MessageReader[T], chunks: Iterable[bytes]) -> tuple[T | None, bytes]:
    """Feed ``chunks`` until ``reader`` has its message; that message (None if it never completed) and
    the chunks after it, joined, which were not fed."""
    result: T | None = None
    after = b""
    for chunk in chunks:
        if reader.done:
            after += chunk
        else:
            result = reader.feed(chunk)
    return result, after
