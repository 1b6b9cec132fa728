"""Free text that the service stores and shows to other people: no control characters.

A description, a key's name or a note ends up in other tenants' terminals (`headhub
marketplace`) and in the web console. Control characters there are an attack, not content: ESC
starts terminal sequences (clear the screen, set the window title, OSC 8 hyperlinks that show one
address and open another), C1 controls do the same on some terminals, and the bidirectional
overrides make text read differently from what it is ("Trojan Source"). They are refused at the
API with 422 `control_characters` (docs/threats.md). Descriptions may keep line breaks and tabs;
names may not. Slugs (tenant, dataset, head and alias names) and labels have grammars of their
own that already exclude all of these.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

CONTROL_CHARACTERS = "control_characters"  # the problem `code` of a refusal

# Bidirectional embeddings, overrides and isolates, and the invisible direction marks.
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
_LINE_BREAKS = frozenset("\n\t")


def is_control(ch: str, *, allow_line_breaks: bool = False) -> bool:
    """Whether the character `ch` is a control character: C0, DEL, C1, line/paragraph
    separators, bidi controls. With `allow_line_breaks`, newline and tab are not (CR still is)."""
    if allow_line_breaks and ch in _LINE_BREAKS:
        return False
    return ch in BIDI_CONTROLS or unicodedata.category(ch) in ("Cc", "Zl", "Zp")


def first_control(text: str, *, allow_line_breaks: bool = False) -> str | None:
    """The first character of `text` that `is_control`, or None."""
    return next((ch for ch in text if is_control(ch, allow_line_breaks=allow_line_breaks)), None)


def _checker(allow_line_breaks: bool):  # type: ignore[no-untyped-def]
    def check(value: str) -> str:
        found = first_control(value, allow_line_breaks=allow_line_breaks)
        if found is not None:
            raise PydanticCustomError(
                CONTROL_CHARACTERS,
                "holds the control character U+{codepoint}; control characters, escape "
                "sequences and bidirectional overrides are not allowed",
                {"codepoint": f"{ord(found):04X}"},
            )
        return value

    return check


# A single-line name (key names, notes): no control character at all.
SafeName = Annotated[str, AfterValidator(_checker(False))]
# Free text (descriptions): newlines and tabs allowed, nothing else of the kind.
SafeText = Annotated[str, AfterValidator(_checker(True))]
