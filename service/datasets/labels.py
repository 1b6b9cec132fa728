"""Label names: shown to users, stored in the database and in head files, never used as paths."""

from __future__ import annotations

import re
import unicodedata

MAX_LABEL_LENGTH = 64
# Letters (any script), digits, underscore to start; then also space, dot, plus and hyphen.
_LABEL_RE = re.compile(r"\w[\w .+-]*")


class InvalidLabel(ValueError):
    """The label is empty, too long or holds characters outside the allowed set."""


def normalize_label(raw: str) -> str:
    """NFC-normalise and check a label, so `café` typed two ways is one class."""
    label = unicodedata.normalize("NFC", raw).strip()
    if not label:
        raise InvalidLabel("a label may not be empty")
    if len(label) > MAX_LABEL_LENGTH:
        raise InvalidLabel(f"a label is at most {MAX_LABEL_LENGTH} characters")
    if not _LABEL_RE.fullmatch(label):
        raise InvalidLabel(
            "a label starts with a letter, digit or underscore and holds only letters, digits, "
            "spaces and _ . + -"
        )
    return label
