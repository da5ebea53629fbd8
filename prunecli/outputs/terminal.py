"""Names, paths and notes on the terminal: printed as they are, in bounded time and width.

Why: rich reads a printed string as markup and runs its highlighter's regular expressions over it,
which take time quadratic in the length of an unbroken word: a note quoting a 70,000-character layer
name took 87 s to print, after the run had done its work. And a name is user input: `[red]` in it
styled the summary, a `[/]` in a path stopped it with a MarkupError. What is printed here is a rich
Text (no markup, no highlighting), which prints in time linear in its length. A word longer than
LONGEST_WORD is shown by its two ends and its length, for the reader's sake only: the limit is well
above any real path or layer name (a deep CI workspace path of a few hundred characters prints whole,
so it can be copied), and the JSON report (`--report`) keeps the whole text.
"""

from __future__ import annotations

import re

LONGEST_WORD = 1_000  # characters of one unbroken word printed whole; a longer one is shown by its ends
_HEAD, _TAIL = 200, 60  # of a longer word, the characters shown before and after its length
_LONG_WORD = re.compile(rf"\S{{{LONGEST_WORD + 1},}}")


def cropped(text) -> str:
    """`text` with every word over LONGEST_WORD characters cut to its ends around its length:
    `aaaa…(70,000 characters)…aaaa`. Linear in the text's length."""
    return _LONG_WORD.sub(lambda m: f"{m[0][:_HEAD]}…({len(m[0]):,} characters)…{m[0][-_TAIL:]}", str(text))


def plain(text, style: str = ""):
    """A rich Text of `text` as it is (no markup, no highlighting), its overlong words cropped."""
    from rich.text import Text

    return Text(cropped(text), style=style)


def line(text, lead: str = "", lead_style: str = ""):
    """One printed line: `lead` in `lead_style` (e.g. "note:" in yellow), then `text` as plain() gives it."""
    from rich.text import Text

    out = Text(lead, style=lead_style) if lead else Text()
    return out.append_text(plain(f" {text}" if lead else text))
