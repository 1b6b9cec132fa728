"""Blobs in an S3-compatible object store (`HEADHUB_BLOB_URL=s3://bucket/prefix`).

Through boto3 (docs/architecture.md, "Running across hosts", says why): its client is thread-safe,
retries throttling and connection errors, speaks to AWS and to S3-compatible servers (MinIO, Ceph,
R2, ...) through `endpoint_url`, and takes credentials from the settings or, when they are unset,
from the standard chain (environment, web identity on Kubernetes, instance profiles).

Memory: `put` hands the caller's bytes to botocore, which streams them to the socket (no copy of
the whole; large blobs go as a multipart upload read in parts); `get` reads the response body into
one bytes object; `open` returns the response stream itself, read as it arrives. Tests check both
with tracemalloc (tests/storage/test_s3.py).

Atomicity: an S3 PUT (or a completed multipart upload) is all or nothing, so the registration
guarantee of the local store holds: the blob exists before the row that refers to it commits, and a
reader never sees a partial object. A multipart upload abandoned by a killed process is invisible
and is aborted by `headhub gc` once older than the grace period (`abort_stale_uploads`).
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from service.storage.blobstore import (
    BlobNotFound,
    BlobStoreUnavailable,
    is_blob_key,
    validate_key,
)

log = logging.getLogger(__name__)

# Below this a blob goes in one PUT straight from the caller's bytes; above it, as a multipart
# upload read in parts of MULTIPART_CHUNK bytes (at most MULTIPART_CONCURRENCY parts in flight).
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024
MULTIPART_CONCURRENCY = 4

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or "a/b" (no leading or trailing slash)

    def object_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def blob_key(self, object_key: str) -> str | None:
        """The blob key of an object under the prefix, else None."""
        if not self.prefix:
            return object_key
        head = self.prefix + "/"
        return object_key[len(head) :] if object_key.startswith(head) else None


def parse_s3_url(url: str) -> S3Location:
    """`s3://bucket[/prefix]` -> S3Location; anything else is a configuration error."""
    if not url.startswith("s3://"):
        raise ValueError(f"HEADHUB_BLOB_URL must look like s3://bucket/prefix, not {url!r}")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    if not _BUCKET_RE.fullmatch(bucket):
        raise ValueError(f"HEADHUB_BLOB_URL: {bucket!r} is not a valid bucket name")
    if prefix:
        validate_key(prefix)  # the same safe grammar as blob keys
    return S3Location(bucket, prefix)


def _is_not_found(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in {"404", "NoSuchKey", "NotFound"} or status == 404


class S3BlobStore:
    """The `BlobStore` protocol on one bucket and key prefix."""

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        addressing_style: str = "auto",
        client: Any = None,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.location = parse_s3_url(url)
        self.url = url
        self._client = client or boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region or None,
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            config=Config(
                s3={"addressing_style": addressing_style},
                retries={"mode": "standard", "max_attempts": 4},
                connect_timeout=5,
                read_timeout=60,
                max_pool_connections=32,
            ),
        )
        self._transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_CHUNK,
            max_concurrency=MULTIPART_CONCURRENCY,
        )

    def __repr__(self) -> str:
        return f"S3BlobStore({self.url!r})"

    def _call(self, op: str, **kw: Any) -> Any:
        """One client call; an unreachable store becomes `BlobStoreUnavailable` (503)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client, op)(Bucket=self.location.bucket, **kw)
        except ClientError as exc:
            if _is_not_found(exc):
                raise BlobNotFound(kw.get("Key", "")) from exc
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status >= 500 or status in {403, 429}:  # down, throttled or not allowed
                raise BlobStoreUnavailable(f"object store: {op} failed ({status})") from exc
            raise
        except BotoCoreError as exc:  # connection refused, timeouts, ...
            raise BlobStoreUnavailable(f"object store: {op} failed ({type(exc).__name__})") from exc

    def put(self, key: str, data: bytes) -> None:
        obj = self.location.object_key(validate_key(key))
        if len(data) < MULTIPART_THRESHOLD:
            self._call("put_object", Key=obj, Body=data)
            return
        self.put_stream(key, io.BytesIO(data))  # BytesIO shares the bytes; parts are read

    def put_stream(self, key: str, stream: BinaryIO) -> None:
        """Write a blob from a readable stream, in parts (memory: a few parts, not the whole)."""
        from botocore.exceptions import BotoCoreError, ClientError

        obj = self.location.object_key(validate_key(key))
        try:
            self._client.upload_fileobj(stream, self.location.bucket, obj, Config=self._transfer)
        except (BotoCoreError, ClientError) as exc:
            raise BlobStoreUnavailable(f"object store: upload failed ({exc})") from exc

    def get(self, key: str) -> bytes:
        obj = self.location.object_key(validate_key(key))
        response = self._call("get_object", Key=obj)
        with response["Body"] as body:
            return body.read()  # type: ignore[no-any-return]

    def open(self, key: str) -> BinaryIO:
        """The response stream (an `io.IOBase`); the caller closes it."""
        obj = self.location.object_key(validate_key(key))
        return self._call("get_object", Key=obj)["Body"]  # type: ignore[no-any-return]

    def exists(self, key: str) -> bool:
        obj = self.location.object_key(validate_key(key))
        try:
            self._call("head_object", Key=obj)
        except BlobNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        """Idempotent, as S3's DELETE is."""
        self._call("delete_object", Key=self.location.object_key(validate_key(key)))

    def scan(self, written_before: float) -> Iterator[tuple[str, int]]:
        """(key, size) of every blob under the prefix last written before `written_before`.

        LastModified is the store's clock, `written_before` the caller's: the gc grace period
        (an hour by default) dwarfs any clock skew between them."""
        prefix = f"{self.location.prefix}/" if self.location.prefix else ""
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.location.bucket, Prefix=prefix
        )
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    key = self.location.blob_key(obj["Key"])
                    if key is None or not is_blob_key(key):
                        continue
                    if obj["LastModified"].timestamp() < written_before:
                        yield key, int(obj["Size"])
        except (BotoCoreError, ClientError) as exc:
            raise BlobStoreUnavailable(f"object store: listing failed ({exc})") from exc

    def abort_stale_uploads(self, started_before: float) -> int:
        """Abort multipart uploads under the prefix begun before `started_before` (UNIX time):
        the invisible leftovers of a process killed mid-upload. -> how many were aborted."""
        prefix = f"{self.location.prefix}/" if self.location.prefix else ""
        pages = self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.location.bucket, Prefix=prefix
        )
        aborted = 0
        for page in pages:
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() < started_before:
                    self._call(
                        "abort_multipart_upload", Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
        return aborted

    def path_for(self, key: str) -> Path | None:
        return None

    def check(self) -> None:
        """Raise `BlobStoreUnavailable` unless the bucket answers (readiness, `headhub` checks)."""
        self._call("head_bucket")
