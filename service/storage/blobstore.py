"""Blob storage behind a small interface: a local directory (the embedded default) or an
S3-compatible object store (`service/storage/s3.py`), chosen by `make_blob_store(settings)`.

Keys are server-made (`images/ab/<sha256>`, `heads/...`): a strict key grammar means a client's
file name can never become a storage path, even through a bug elsewhere (docs/architecture.md,
"Untrusted input").
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pydantic import SecretStr

    from service.settings import Settings

# One or more segments of safe characters; no empty, "." or ".." segment; no leading slash.
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}"
_KEY_RE = re.compile(rf"^{_SEGMENT}(?:/{_SEGMENT}){{0,7}}$")


class InvalidBlobKey(ValueError):
    """A key outside the grammar: a programming error, never user input reaching the store."""


class BlobNotFound(KeyError):
    """The key has no blob."""


class BlobStoreUnavailable(RuntimeError):
    """The store cannot be reached or refused service (a remote store down): answered 503."""


def validate_key(key: str) -> str:
    if not _KEY_RE.fullmatch(key) or any(part in {".", ".."} for part in key.split("/")):
        raise InvalidBlobKey(f"invalid blob key {key!r}")
    return key


def is_blob_key(key: str) -> bool:
    """Whether `key` is in the grammar (a scan skips anything else: temp files, strays)."""
    return bool(_KEY_RE.fullmatch(key)) and not any(p in {".", ".."} for p in key.split("/"))


def image_key(sha256_hex: str) -> str:
    """Content address of an image: fanned out by the first byte so no directory grows huge."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256_hex):
        raise InvalidBlobKey(f"not a sha256 hex digest: {sha256_hex!r}")
    return f"images/{sha256_hex[:2]}/{sha256_hex}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@runtime_checkable
class BlobStore(Protocol):
    """What the service needs from a blob store; `put` must be atomic (all or nothing visible)."""

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def scan(self, written_before: float) -> Iterator[tuple[str, int]]:
        """(key, size in bytes) of every blob last written before `written_before` (UNIX time)."""
        ...

    def open(self, key: str) -> BinaryIO: ...

    def path_for(self, key: str) -> Path | None: ...


class LocalBlobStore:
    """Blobs as files under `root`; writes go to a temp file in the same directory, then rename."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / validate_key(key)).resolve()
        # Belt and braces: the grammar already forbids escaping the root.
        if self.root not in path.parents:
            raise InvalidBlobKey(f"blob key {key!r} escapes the store")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise BlobNotFound(key) from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def scan(self, written_before: float) -> Iterator[tuple[str, int]]:
        for path in self.root.rglob("*"):
            key = path.relative_to(self.root).as_posix()
            if not is_blob_key(key):  # in-flight ".tmp-" files, stray names: not blobs
                continue
            try:
                st = path.stat()
            except FileNotFoundError:  # deleted while we walk
                continue
            if stat.S_ISREG(st.st_mode) and st.st_mtime < written_before:
                yield key, st.st_size

    def open(self, key: str) -> BinaryIO:
        """A readable binary stream, for blobs too large to hold in memory at once."""
        try:
            return self._path(key).open("rb")
        except FileNotFoundError as exc:
            raise BlobNotFound(key) from exc

    def path_for(self, key: str) -> Path | None:
        """A local file path for tools that want one (a remote store would return None)."""
        return self._path(key)


def make_blob_store(settings: Settings) -> BlobStore:
    """The configured store: S3 when `blob_url` is set, else the local directory `blob_dir`."""
    if settings.blob_url:
        from service.storage.s3 import S3BlobStore

        def secret(v: SecretStr | None) -> str | None:
            return v.get_secret_value() if v is not None else None

        return S3BlobStore(
            settings.blob_url,
            endpoint_url=settings.s3_endpoint_url or None,
            region=settings.s3_region or None,
            access_key_id=secret(settings.s3_access_key_id),
            secret_access_key=secret(settings.s3_secret_access_key),
            addressing_style=settings.s3_addressing_style,
        )
    assert settings.blob_dir is not None
    return LocalBlobStore(settings.blob_dir)
