"""The feature cache: extractor outputs stored once per (image SHA-256, extractor id).

Training a head reads features from here, so retraining never sends an image through the network
again. `ensure_features` fills the cache off the request path (the worker calls it at the start of
every training job; uploads trigger it in the background, best effort); `load_features` hands a
dataset's cached features to a trainer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from extractor.client import ExtractorRejectedImage
from extractor.wire import FeatureBatch
from service.datasets import repository as repo
from service.db import session_scope
from service.storage.blobstore import BlobNotFound, BlobStore, image_key

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]


class SyncExtractor(Protocol):
    """The part of `extractor.client.ExtractorClient` the cache uses (`extractor_id` is passed
    only when one is named: fakes of a one-extractor world need not take it)."""

    def info_sync(self) -> dict[str, Any]: ...

    def features_sync(
        self, files: Sequence[tuple[str, bytes]], request_id: str | None = None
    ) -> FeatureBatch: ...


class ExtractorChanged(RuntimeError):
    """The extractor answering is not the one the run started with (a redeploy mid-run)."""


def _rows(extractor_id: str, shas: list[str], batch: FeatureBatch) -> list[dict[str, object]]:
    if batch.extractor_id != extractor_id:
        raise ExtractorChanged(
            f"extractor {batch.extractor_id} answered a run started on {extractor_id}"
        )
    floats = np.asarray(batch.floats, dtype="<f4")
    bits = np.asarray(batch.bits, dtype=np.uint8)
    if floats.ndim != 2 or floats.shape[0] != len(shas) or bits.shape[0] != len(shas):
        raise ValueError(
            f"extractor returned features of shape {floats.shape}/{bits.shape} "
            f"for {len(shas)} images"
        )
    if bits.shape[1] != (floats.shape[1] + 7) // 8 or not np.isfinite(floats).all():
        raise ValueError("extractor returned inconsistent or non-finite features")
    return [
        {
            "image_sha256": sha,
            "extractor_id": extractor_id,
            "dim": int(floats.shape[1]),
            "floats": floats[i].tobytes(),
            "bits": bits[i].tobytes(),
        }
        for i, sha in enumerate(shas)
    ]


def _compute(
    client: SyncExtractor, extractor_id: str, files: list[tuple[str, bytes]], named: bool = False
) -> list[dict[str, object]]:
    """One batch through the extractor; if it refuses an image, go one by one and skip that one.

    `named`: ask the replicas for `extractor_id` explicitly (several served side by side)."""
    if not files:
        return []
    kw: dict[str, Any] = {"extractor_id": extractor_id} if named else {}
    try:
        return _rows(extractor_id, [f[0] for f in files], client.features_sync(files, **kw))
    except ExtractorRejectedImage as exc:
        if len(files) == 1:
            log.warning("extractor refused image %s: %s", files[0][0], exc)
            return []
    rows: list[dict[str, object]] = []
    for sha, data in files:
        rows += _compute(client, extractor_id, [(sha, data)], named)
    return rows


def ensure_features(
    session_factory: sessionmaker[Session],
    extractor_client: SyncExtractor,
    dataset_id: str,
    *,
    blobs: BlobStore,
    batch_size: int = 32,
    progress_cb: ProgressCallback | None = None,
    extractor_id: str | None = None,
) -> int:
    """Compute and store the dataset's missing features for `extractor_id` (None: the
    replicas' default extractor).

    Idempotent and safe to run concurrently (rows another run stored first are kept). Commits
    after every batch, so an interrupted run keeps its progress. Returns how many were computed.
    """
    named = extractor_id is not None
    if extractor_id is None:
        extractor_id = str(extractor_client.info_sync()["id"])
    with session_scope(session_factory) as session:
        missing = repo.missing_feature_shas(session, dataset_id, extractor_id)
        tenant_id = repo.dataset_tenant(session, dataset_id)
    total, done, computed = len(missing), 0, 0
    if progress_cb:
        progress_cb(0, total)
    for start in range(0, total, batch_size):
        shas = missing[start : start + batch_size]
        files: list[tuple[str, bytes]] = []
        for sha in shas:
            try:
                files.append((sha, blobs.get(image_key(sha))))
            except BlobNotFound:
                log.warning("image %s of dataset %s has no blob; skipped", sha, dataset_id)
        rows = _compute(extractor_client, extractor_id, files, named)
        with session_scope(session_factory) as session:
            repo.insert_features(session, rows)
            if tenant_id is not None:  # this tenant's own featurizing covered them
                repo.insert_claims(
                    session, tenant_id, extractor_id, [str(r["image_sha256"]) for r in rows]
                )
        done += len(shas)
        computed += len(rows)
        if progress_cb:
            progress_cb(done, total)
    return computed


def load_features(
    session: Session, dataset_id: str, extractor_id: str
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """-> (floats (N, D) float32, bits (N, ceil(D/8)) uint8, labels, sha256s), by sha256.

    Only images with cached features are included: call `ensure_features` first.
    """
    rows = repo.dataset_features(session, dataset_id, extractor_id)
    if not rows:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.uint8), [], []
    dims = {r[2] for r in rows}
    if len(dims) != 1:
        raise ValueError(f"cached features of extractor {extractor_id} disagree on width: {dims}")
    floats = np.stack([np.frombuffer(r[3], dtype="<f4") for r in rows]).astype(np.float32)
    bits = np.stack([np.frombuffer(r[4], dtype=np.uint8) for r in rows])
    return floats, bits, [r[1] for r in rows], [r[0] for r in rows]


class BackgroundFeaturizer:
    """Warms the cache after uploads without a job: one run per dataset at a time, best effort.

    A trigger while a run is going marks the dataset for one more pass, so images added during a
    run are not missed. Errors are logged, never raised: training jobs fill any gap anyway.
    """

    def __init__(
        self, session_factory: sessionmaker[Session], client: SyncExtractor, blobs: BlobStore
    ) -> None:
        self.session_factory = session_factory
        self.client = client
        self.blobs = blobs
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._again: set[str] = set()

    def _default_extractor(self) -> str | None:
        """The registry's default extractor (what new jobs train on); None: the replicas'."""
        from service.extractors.repository import get_default

        with session_scope(self.session_factory) as session:
            found = get_default(session)
            return None if found is None else found.id

    def __call__(self, dataset_id: str) -> None:
        with self._lock:
            if dataset_id in self._running:
                self._again.add(dataset_id)
                return
            self._running.add(dataset_id)
        try:
            while True:
                try:
                    ensure_features(
                        self.session_factory,
                        self.client,
                        dataset_id,
                        blobs=self.blobs,
                        extractor_id=self._default_extractor(),
                    )
                except Exception as exc:
                    log.warning("background featurize of dataset %s failed: %s", dataset_id, exc)
                with self._lock:
                    if dataset_id not in self._again:
                        self._running.discard(dataset_id)
                        return
                    self._again.discard(dataset_id)
        except BaseException:
            with self._lock:
                self._running.discard(dataset_id)
            raise
