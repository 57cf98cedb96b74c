"""The buffering every handshake reader shares (relay headers, socks5 messages, HTTP heads).

Owns one contract: ``feed(chunk)`` returns the message once complete and None before; ``leftover``
then holds the bytes that followed it in the same read (data the peer sent early, which the caller
must not lose); ``buffered`` is what an incomplete message holds (non-zero at EOF means the peer cut
it); feeding a reader again after its message is a programming error. Subclasses say only where a
message ends and what it is, in ``_parse``. Used by ``proto.relay``, ``proto.socks5`` and
``proto.http_connect``; sans-I/O like them, and never imported outside ``proto``.
"""

from __future__ import annotations

from typing import Generic, TypeVar

_T = TypeVar("_T")


class MessageReader(Generic[_T]):
    """Buffers bytes until ``_parse`` finds one complete message; keeps what followed as ``leftover``."""

    # Names the protocol in the error for a second feed ("relay", "socks5", "http").
    _protocol = "proto"

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._done = False
        self._leftover = b""

    @property
    def done(self) -> bool:
        return self._done

    @property
    def leftover(self) -> bytes:
        """Bytes received after the message (early data, a pipelined request). Empty before done."""
        return self._leftover

    @property
    def buffered(self) -> int:
        """Bytes held while the message is incomplete (what a truncated peer left behind)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> _T | None:
        if self._done:
            raise RuntimeError(
                f"{self._protocol}: {type(self).__name__} already parsed its message; read .leftover instead"
            )
        self._buffer += data
        parsed = self._parse(self._buffer)
        if parsed is None:
            return None
        message, used = parsed
        self._leftover = bytes(self._buffer[used:])
        self._buffer = bytearray()
        self._done = True
        return message

    def _parse(self, buf: bytearray) -> tuple[_T, int] | None:
        """The message and the bytes it used once ``buf`` holds it all, None before; raises on bad bytes."""
        raise NotImplementedError


__all__ = ["MessageReader"]
