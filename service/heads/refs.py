"""Head references: ``<owner>/<name>[:<version>|@<alias>]`` (api.md, "Head references").

Parsing and the choice of version are pure, so that the server (predict, export) and the client
commands share one grammar and one resolution rule.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# Names are slugs so they can appear in URLs and references without escaping; ``:``, ``@`` and
# ``/`` are the reference's own separators and never part of a name.
HEAD_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,39}$"
OWNER_PATTERN = r"^[a-z0-9-]{2,40}$"  # tenant names (api.md, Admin)
DEFAULT_ALIAS = "production"

_REF = re.compile(
    r"^(?:(?P<owner>[^/:@]+)/)?(?P<name>[^/:@]+)"
    r"(?::(?P<version>[^/:@]+)|@(?P<alias>[^/:@]+))?$"
)
# fullmatch, never match: `$` also matches before a trailing newline, so `re.match` would take
# "production\n" for an alias (the same patterns in pydantic fields use Rust's regex, where `$`
# is the end of the text).
_NAME = re.compile(HEAD_NAME_PATTERN)
_ALIAS = re.compile(ALIAS_PATTERN)
_OWNER = re.compile(OWNER_PATTERN)


class InvalidHeadRef(ValueError):
    """A string that is not a head reference; the HTTP layer maps it to 422 ``invalid_head_ref``."""

    def __init__(self, text: str, reason: str) -> None:
        super().__init__(f"invalid head reference {text!r}: {reason}")
        self.text = text
        self.reason = reason


@dataclass(frozen=True, slots=True)
class HeadRef:
    """A parsed reference; ``owner`` is None when the caller's own tenant is meant."""

    owner: str | None
    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        text = f"{self.owner}/{self.name}" if self.owner else self.name
        if self.version is not None:
            return f"{text}:{self.version}"
        if self.alias is not None:
            return f"{text}@{self.alias}"
        return text

    @property
    def effective_alias(self) -> str:
        """The alias a reference without a version resolves through: its own, else `production`."""
        return self.alias or DEFAULT_ALIAS


class UnresolvedRef(LookupError):
    """A well-formed reference that names no version of its head; ``code`` is the problem code."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def is_valid_head_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


def is_valid_alias(alias: str) -> bool:
    return bool(_ALIAS.fullmatch(alias))


def parse_ref(text: str) -> HeadRef:
    """Parse one reference; raises ``InvalidHeadRef`` with a reason a user can act on."""
    text = text.strip()
    match = _REF.fullmatch(text)
    if not match:
        raise InvalidHeadRef(text, "expected <owner>/<name>[:<version>|@<alias>]")
    owner, name = match["owner"], match["name"]
    if owner is not None and not _OWNER.fullmatch(owner):
        raise InvalidHeadRef(text, f"owner {owner!r} is not a tenant name")
    if not _NAME.fullmatch(name):
        raise InvalidHeadRef(text, f"name {name!r} is not a head name")
    version: int | None = None
    if match["version"] is not None:
        raw = match["version"]
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 9 or int(raw) < 1:
            raise InvalidHeadRef(text, f"version {raw!r} is not a positive integer")
        version = int(raw)
    alias = match["alias"]
    if alias is not None and not _ALIAS.fullmatch(alias):
        raise InvalidHeadRef(text, f"alias {alias!r} is not an alias name")
    return HeadRef(owner=owner, name=name, version=version, alias=alias)


def parse_ref_list(text: str, *, max_refs: int) -> list[HeadRef]:
    """Parse ``a,b,c`` as given in ``?heads=``; duplicates collapse, order is kept."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise InvalidHeadRef(text, "no head named")
    if len(parts) > max_refs:
        raise InvalidHeadRef(text, f"at most {max_refs} heads per request")
    refs = [parse_ref(p) for p in parts]
    return list(dict.fromkeys(refs))


def version_to_use(
    ref: HeadRef, *, alias_target: int | None, newest: Callable[[], int | None]
) -> int:
    """The version number a reference means: ``:<version>``; else the version its
    ``effective_alias`` points at (``alias_target``, None when unset); else, when the reference
    named no alias, the newest version. Raises ``UnresolvedRef``."""
    if ref.version is not None:
        return ref.version
    if alias_target is not None:
        return alias_target
    if ref.alias is not None:
        raise UnresolvedRef("head_alias_not_found", f"has no alias '{ref.alias}'")
    found = newest()
    if found is None:
        raise UnresolvedRef("head_version_not_found", "has no versions")
    return found
