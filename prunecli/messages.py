"""Text that goes into one-line messages. The lowest layer: anything may import it.

Why: a path is user input. A newline in it made a two-line error (a crafted file name could forge a
`prunecli: error:` line of its own), and an undecodable byte (a non-UTF-8 file name) could not be
printed at all.
"""

from __future__ import annotations

import os


def shown(path) -> str:
    """`path` (or any text) for a one-line message: control characters and undecodable bytes escaped."""
    text = os.fsdecode(path) if isinstance(path, bytes) else str(path)
    return "".join(ch if ch.isprintable() and not 0xDC80 <= ord(ch) <= 0xDCFF else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return ch.encode("unicode_escape").decode("ascii")
