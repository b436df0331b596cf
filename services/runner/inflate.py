"""Response bodies decoded from their ``Content-Encoding`` in bounded steps.

A few hundred kilobytes of gzip inflate to gigabytes, and httpx's decoders inflate each network
read whole (a 64 KiB read of zeros is 64 MiB) before a caller's cap can apply. Here every stage
is zlib's ``decompress(data, max_length)``: a stage produces at most what is asked of it and keeps
the rest of its input for later, so decoding stops at the caller's limit.

This module must never produce more than the limit asked for, nor hold more than one network
read and one stage's chunk per stage besides. Encodings it cannot bound (br and zstd need
packages that are not installed; anything unknown) leave the body as it came: its raw bytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import httpx

CHUNK = 64 * 1024  # what one stage asks of the stage before it
MAX_STAGES = 4  # "gzip, gzip, …" past this is not a body anyone means to be read
_WBITS = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}


class _Stage:
    """One decoding: ``push`` input, ``pull(n)`` at most n bytes of output."""

    def __init__(self, wbits: int) -> None:
        self._wbits = wbits
        self._decompressor = zlib.decompressobj(wbits)
        self._pending = b""
        self._started = False

    @property
    def finished(self) -> bool:
        return self._decompressor.eof

    def push(self, data: bytes) -> None:
        if not self.finished:  # after the end of the stream: trailing bytes are ignored (httpx)
            self._pending += data

    def pull(self, n: int) -> bytes:
        if not self._pending or self.finished:
            return b""
        try:
            out = self._decompressor.decompress(self._pending, n)  # n ≥ 1: 0 means unbounded
        except zlib.error:
            if self._wbits == zlib.MAX_WBITS and not self._started:
                # "deflate" is zlib-wrapped (RFC 9110 §8.4.1.2), but servers send it raw too.
                self._wbits = -zlib.MAX_WBITS
                self._decompressor = zlib.decompressobj(self._wbits)
                return self.pull(n)
            raise httpx.DecodingError(f"the response body is not valid {self._name}") from None
        self._started = True
        self._pending = self._decompressor.unconsumed_tail
        return out

    @property
    def _name(self) -> str:
        return "gzip" if self._wbits > zlib.MAX_WBITS else "deflate"


class Inflater:
    """The decodings of one response, outermost first (the reverse of their listing)."""

    def __init__(self, encodings: Iterable[str]) -> None:
        names = [name.strip().lower() for name in encodings]
        names = [name for name in names if name and name != "identity"]
        if len(names) > MAX_STAGES or any(name not in _WBITS for name in names):
            names = []  # an encoding we cannot decode in bounded steps: keep the raw bytes
        self._stages = [_Stage(_WBITS[name]) for name in reversed(names)]
        self._raw = b""

    @property
    def finished(self) -> bool:
        """No more output can come, whatever else is read."""
        return any(stage.finished for stage in self._stages)

    def decode(self, raw: bytes, limit: int) -> bytes:
        """At most ``limit`` (≥ 1) bytes of decoded body, from ``raw`` and what is left of the
        reads before. Less than ``limit`` means everything read so far has been decoded."""
        if not self._stages:
            self._raw += raw
            out, self._raw = self._raw[:limit], self._raw[limit:]
            return out
        self._stages[0].push(raw)
        return self._pull(len(self._stages) - 1, limit)

    def _pull(self, index: int, n: int) -> bytes:
        stage = self._stages[index]
        out = stage.pull(n)
        while index > 0 and len(out) < n and not stage.finished:
            more = self._pull(index - 1, CHUNK)
            if not more:
                break
            stage.push(more)
            out += stage.pull(n - len(out))
        return out
