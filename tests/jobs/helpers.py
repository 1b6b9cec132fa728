"""Datasets with cached features written straight to the database, and extractor fakes.

Jobs tests are about the queue, not about images: features are synthetic (two well separated
clusters per label) and stored in the feature cache, so `ensure_features` finds nothing to do
and the extractor is only asked who it is.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from extractor.wire import FeatureBatch
from service.datasets.tables import Dataset, DatasetImage, Feature, TenantFeature
from service.db import new_id, session_scope
from service.heads.tables import HeadVersion
from service.jobs.tables import Job

FAKE_EXTRACTOR_ID = "f" * 64
DIM = 20


class FakeExtractor:
    """Implements the worker's view of `ExtractorClient` (info_sync, features_sync)."""

    def __init__(self, extractor_id: str = FAKE_EXTRACTOR_ID, fail: Exception | None = None):
        self.extractor_id = extractor_id
        self.fail = fail
        self.info_calls = 0

    def info_sync(self, request_id: str | None = None) -> dict[str, Any]:
        self.info_calls += 1
        if self.fail is not None:
            raise self.fail
        return {
            "id": self.extractor_id,
            "feature_dim": DIM,
            "preprocessing": {"input_size": [3, 32, 32]},
        }

    def features_sync(self, files: Any, request_id: str | None = None) -> FeatureBatch:
        raise AssertionError("features are pre-cached in these tests")


def seed_dataset(
    factory: sessionmaker[Session],
    tenant_id: str,
    *,
    extractor_id: str = FAKE_EXTRACTOR_ID,
    labels: tuple[str, ...] = ("cat", "dog"),
    per_label: int = 12,
    seed: int = 0,
) -> str:
    """A dataset whose every image already has cached features; returns its id."""
    rng = np.random.default_rng(seed)
    dataset_id = new_id()
    with session_scope(factory) as s:
        s.add(Dataset(id=dataset_id, tenant_id=tenant_id, name=f"ds-{dataset_id[:8]}"))
        s.flush()
        for li, label in enumerate(labels):
            center = np.where(np.arange(DIM) % len(labels) == li, 2.0, -2.0)
            for i in range(per_label):
                sha = hashlib.sha256(f"{dataset_id}-{label}-{i}".encode()).hexdigest()
                x = (center + 0.3 * rng.normal(size=DIM)).astype("<f4")
                bits = np.packbits((x >= 0).astype(np.uint8), bitorder="little")
                s.add(
                    DatasetImage(
                        dataset_id=dataset_id,
                        sha256=sha,
                        tenant_id=tenant_id,
                        label=label,
                        filename=f"{label}-{i}.png",
                        size_bytes=1,
                        width=1,
                        height=1,
                    )
                )
                s.add(
                    Feature(
                        image_sha256=sha,
                        extractor_id=extractor_id,
                        dim=DIM,
                        floats=x.tobytes(),
                        bits=bits.tobytes(),
                    )
                )
                # as the tenant's own featurizing leaves it (service/datasets/features.py)
                s.add(
                    TenantFeature(tenant_id=tenant_id, image_sha256=sha, extractor_id=extractor_id)
                )
    return dataset_id


def job_row(factory: sessionmaker[Session], job_id: str) -> Job:
    with session_scope(factory) as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def versions_of_job(factory: sessionmaker[Session], job_id: str) -> int:
    with session_scope(factory) as s:
        return int(s.scalar(select(func.count()).where(HeadVersion.job_id == job_id)) or 0)


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s")


def add_job(
    factory: sessionmaker[Session],
    tenant_id: str,
    dataset_id: str,
    *,
    head: str = "flowers",
    head_type: str = "float",
    params: dict[str, Any] | None = None,
    max_attempts: int = 3,
    **extra: Any,
) -> str:
    """Queue a job row directly (the API path has its own tests)."""
    from tests.jobs.conftest import QUICK

    with session_scope(factory) as s:
        job = Job(
            tenant_id=tenant_id,
            dataset_id=dataset_id,
            head_name=head,
            head_type=head_type,
            params=QUICK if params is None else params,
            max_attempts=max_attempts,
            **extra,
        )
        s.add(job)
        s.flush()
        return job.id
