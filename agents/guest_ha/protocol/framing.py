"""Newline framing: ``\\n{json}\\n``.

The decoder is fed arbitrary chunks of a byte stream and returns complete frame
payloads. It copes with fragments, several frames in one chunk, garbage,
and oversized frames (dropped; decoding resumes after the next newline). Its
memory is bounded by ``max_frame`` bytes.
"""

from __future__ import annotations

from typing import List, Union

from .errors import FrameTooLarge, ProtocolError

MAX_FRAME_BYTES = 4096
"""Largest frame payload (without the delimiting newlines) a receiver accepts."""

DecodedItem = Union[bytes, ProtocolError]


class FrameDecoder:
    """Incremental, bounded decoder for newline-delimited frames."""

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        if max_frame < 2:
            raise ValueError("max_frame must be at least 2 bytes")
        self.max_frame = max_frame
        self._partial = bytearray()
        self._skipping = False
        self.frames_dropped = 0

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame (always <= max_frame)."""
        return len(self._partial)

    def reset(self) -> None:
        """Forget any partial frame, e.g. when the peer reconnects."""
        self._partial.clear()
        self._skipping = False

    def feed(self, data: bytes) -> List[DecodedItem]:
        """Consume ``data``; return complete frames and errors, in stream order.

        Empty and whitespace-only frames are skipped silently: the ``\\n{json}\\n``
        framing produces them between back-to-back frames.
        """
        out: List[DecodedItem] = []
        start = 0
        limit = self.max_frame
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            chunk = data[start:nl]
            start = nl + 1
            if self._skipping:
                self._skipping = False
                continue
            if self._partial:
                if len(self._partial) + len(chunk) > limit:
                    self._partial.clear()
                    out.append(self._too_large())
                    continue
                self._partial += chunk
                frame = bytes(self._partial)
                self._partial.clear()
            else:
                frame = chunk
            if len(frame) > limit:
                out.append(self._too_large())
            elif frame.strip():
                out.append(frame)
        rest = data[start:]
        if rest and not self._skipping:
            if len(self._partial) + len(rest) > limit:
                self._partial.clear()
                self._skipping = True
                out.append(self._too_large())
            else:
                self._partial += rest
        return out

    def _too_large(self) -> FrameTooLarge:
        self.frames_dropped += 1
        return FrameTooLarge(f"frame larger than {self.max_frame} bytes dropped")


def encode_frame(payload: bytes) -> bytes:
    """Wrap one JSON payload (which must hold no newline) as ``\\n{json}\\n``."""
    if b"\n" in payload:
        raise ValueError("a frame payload must not contain a newline")
    return b"\n" + payload + b"\n"
