"""Safe reading of an uploaded zip whose top-level folders are labels (docs/architecture.md,
"Untrusted input").

Two passes: `scan_archive` checks every entry's name, flags and sizes and decompresses each one
with a bounded read (header sizes are not trusted), before anything is stored; only then does
`iter_members` hand the entries out one at a time, so memory holds one image, not the archive.
An unsafe archive is refused as a whole (422, or 413 for a bomb) and nothing is written.
"""

from __future__ import annotations

import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from service.datasets.labels import InvalidLabel, normalize_label
from service.errors import PayloadTooLarge, Unprocessable

_CHUNK = 64 * 1024
# Every central-directory record is at least this long (fixed part, empty name).
_MIN_CD_RECORD = 46
# The compression-ratio cap only applies past this many output bytes: tiny entries may
# legitimately compress very well, and cannot be a bomb.
_RATIO_GRACE_BYTES = 1024 * 1024
_ARCHIVE_SUFFIXES = (
    ".zip",
    ".jar",
    ".tar",
    ".tgz",
    ".gz",
    ".bz2",
    ".xz",
    ".zst",
    ".7z",
    ".rar",
    ".lz",
    ".cab",
)
_ARCHIVE_MAGIC = (
    b"PK\x03\x04",
    b"PK\x05\x06",
    b"PK\x07\x08",
    b"\x1f\x8b",
    b"BZh",
    b"\xfd7zXZ\x00",
    b"7z\xbc\xaf\x27\x1c",
    b"Rar!\x1a\x07",
    b"\x28\xb5\x2f\xfd",
    b"MSCF",
)


@dataclass(frozen=True)
class ArchiveLimits:
    max_entries: int
    max_total_bytes: int
    max_ratio: int
    # One entry (one image) declaring more is skipped unread, `image_bytes_too_large`.
    max_entry_bytes: int | None = None


@dataclass(frozen=True)
class ArchiveEntry:
    """One image-to-be: its label, the name shown back to the client, its size and CRC."""

    info: zipfile.ZipInfo
    label: str
    display_name: str
    size: int


@dataclass(frozen=True)
class SkippedEntry:
    display_name: str
    reason: str
    code: str = "invalid_archive_entry"


@dataclass(frozen=True)
class ArchivePlan:
    entries: list[ArchiveEntry]
    skipped: list[SkippedEntry]


def _unsafe(name: str, why: str) -> Unprocessable:
    return Unprocessable(
        f"archive entry {name!r} {why}; the archive was rejected and nothing was stored",
        code="archive_unsafe_entry",
    )


def _bomb(detail: str) -> PayloadTooLarge:
    return PayloadTooLarge(f"{detail}; the archive was rejected", code="archive_too_large")


def _check_directory_size(fileobj: IO[bytes], limits: ArchiveLimits) -> None:
    """Refuse a huge central directory before `zipfile` builds one object per entry of it."""
    try:
        end = zipfile._EndRecData(fileobj)  # type: ignore[attr-defined]
    except OSError:
        end = None
    if end is None:
        raise Unprocessable("the archive is not a readable zip file", code="archive_invalid")
    entries, cd_size = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    # A generous upper bound on a directory of max_entries records with long names.
    if entries > limits.max_entries or cd_size > limits.max_entries * (_MIN_CD_RECORD + 1024):
        raise _bomb(f"the archive holds more than {limits.max_entries} entries")
    fileobj.seek(0)


def _check_name(info: zipfile.ZipInfo) -> list[str]:
    """Path safety: no traversal, absolute paths, backslashes or symlinks, whatever the OS."""
    raw = info.orig_filename
    problem = None
    if "\\" in raw:
        problem = "uses a backslash in its path"
    elif raw.startswith("/") or (len(raw) > 1 and raw[0].isalpha() and raw[1] == ":"):
        problem = "has an absolute path"
    elif "\x00" in raw or any(part == ".." for part in raw.split("/")):
        problem = "escapes the archive root"
    elif stat.S_ISLNK(info.external_attr >> 16):
        problem = "is a symbolic link"
    if problem:
        raise _unsafe(raw, problem)
    if info.flag_bits & 0x1:
        raise Unprocessable(
            f"archive entry {raw!r} is encrypted; encrypted archives are not supported",
            code="archive_encrypted",
        )
    return [p for p in raw.split("/") if p and p != "."]


def _read_bounded(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int, limits: ArchiveLimits
) -> bytes:
    """Decompress one entry, stopping at the first byte past any cap; trust no header field."""
    out = bytearray()
    try:
        with zf.open(info) as fh:
            while True:
                # Ask for one byte more than the header promises, to catch a forged size.
                chunk = fh.read(min(_CHUNK, info.file_size + 1 - len(out)))
                if not chunk:
                    break
                out += chunk
                if len(out) > budget:
                    raise _bomb(f"the archive expands past {limits.max_total_bytes} bytes")
                if len(out) > _RATIO_GRACE_BYTES and (
                    len(out) > limits.max_ratio * max(info.compress_size, 1)
                ):
                    raise _bomb(
                        f"archive entry {info.orig_filename!r} expands more than "
                        f"{limits.max_ratio}x"
                    )
                if len(out) > info.file_size:
                    break
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, OSError) as exc:
        raise Unprocessable(
            f"archive entry {info.orig_filename!r} is corrupt or its sizes are forged ({exc})",
            code="archive_corrupt",
        ) from exc
    if len(out) != info.file_size:
        raise Unprocessable(
            f"archive entry {info.orig_filename!r} declares {info.file_size} bytes but holds "
            f"{'more' if len(out) > info.file_size else len(out)}",
            code="archive_corrupt",
        )
    return bytes(out)


def _is_archive(name: str, head: bytes) -> bool:
    return (
        name.lower().endswith(_ARCHIVE_SUFFIXES)
        or head.startswith(_ARCHIVE_MAGIC)
        or (head[257:262] == b"ustar")
    )


def open_archive(fileobj: IO[bytes], limits: ArchiveLimits) -> zipfile.ZipFile:
    _check_directory_size(fileobj, limits)
    try:
        zf = zipfile.ZipFile(fileobj)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise Unprocessable(
            f"the archive is not a readable zip file ({exc})", code="archive_invalid"
        ) from exc
    if len(zf.infolist()) > limits.max_entries:
        raise _bomb(f"the archive holds more than {limits.max_entries} entries")
    return zf


def scan_archive(zf: zipfile.ZipFile, limits: ArchiveLimits) -> ArchivePlan:
    """Check the whole archive; raise (422/413) on anything unsafe, before anything is stored."""
    infos = [i for i in zf.infolist() if not i.is_dir()]
    for info in zf.infolist():
        _check_name(info)
    declared = sum(i.file_size for i in infos)
    if declared > limits.max_total_bytes:
        raise _bomb(f"the archive expands to {declared} bytes, over {limits.max_total_bytes}")

    entries: list[ArchiveEntry] = []
    skipped: list[SkippedEntry] = []
    budget = limits.max_total_bytes
    for info in infos:
        parts = _check_name(info)
        name = "/".join(parts)
        if parts[0] == "__MACOSX" or parts[-1].startswith("."):
            continue  # desktop metadata, not images
        if limits.max_entry_bytes is not None and info.file_size > limits.max_entry_bytes:
            # Not even decompressed; a forged smaller size is caught by `_read_bounded`.
            skipped.append(
                SkippedEntry(
                    name,
                    f"the entry has {info.file_size} bytes, over the limit of "
                    f"{limits.max_entry_bytes} per image",
                    "image_bytes_too_large",
                )
            )
            continue
        data = _read_bounded(zf, info, budget, limits)
        budget -= len(data)
        if _is_archive(name, data[:512]):
            raise Unprocessable(
                f"archive entry {name!r} is itself an archive; nested archives are not supported",
                code="archive_nested",
            )
        if len(parts) < 2:
            skipped.append(SkippedEntry(name, "not inside a label folder"))
            continue
        try:
            label = normalize_label(parts[0])
        except InvalidLabel as exc:
            skipped.append(SkippedEntry(name, f"invalid label folder: {exc}"))
            continue
        entries.append(ArchiveEntry(info, label, name, len(data)))
    return ArchivePlan(entries, skipped)


def iter_members(
    zf: zipfile.ZipFile, plan: ArchivePlan, limits: ArchiveLimits
) -> Iterator[tuple[ArchiveEntry, bytes]]:
    """The scanned entries with their bytes, one at a time (same bounds as the scan)."""
    for entry in plan.entries:
        yield entry, _read_bounded(zf, entry.info, entry.size, limits)
