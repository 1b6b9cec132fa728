"""The worker's half of a move: retrain a head version on another extractor and compare the two.

The version's dataset is featurized on the target extractor (cached per image and extractor, so
a second move or a retrain costs no network pass), the head is trained with the version's head
type, params, seed and validation fraction, and both the old version (on its own extractor's
cached features) and the new one are scored on the same validation split: the split that
`train_head` draws first from the seed, over the same images in the same order. Both sets of
numbers go side by side under `metrics["move"]` of the new version. A version whose dataset is
gone cannot be retrained: the job fails at once, saying so.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from extractor.client import ExtractorError
from service.datasets.features import SyncExtractor, ensure_features, load_features
from service.db import session_scope
from service.heads import repository as heads_repo
from service.heads.headfile import decode_head
from service.heads.tables import HeadAlias, HeadVersion
from service.jobs import repository as repo
from service.jobs.runtime import ClaimedJob, JobHeartbeat
from service.jobs.worker import PermanentJobError
from service.storage.blobstore import BlobNotFound, BlobStore
from service.training import TrainedHead, train_head
from service.training.data import stratified_split
from service.training.metrics import topk_accuracy
from service.training.scoring import score

log = logging.getLogger("headhub.worker")
PRODUCTION = "production"


class MoveImpossible(PermanentJobError):
    """The version cannot be moved (dataset or version gone): the job fails, not retried."""


@dataclass(frozen=True)
class Source:
    """The version being moved, read once at the start of the job."""

    head_id: str
    version: int
    extractor_id: str
    blob_key: str
    dataset_id: str


def read_source(factory: sessionmaker[Session], job: ClaimedJob) -> Source:
    with session_scope(factory) as session:
        head = heads_repo.get_head_by_tenant(session, job.tenant_id, job.head_name)
        version = (
            None
            if head is None or job.from_version is None
            else heads_repo.get_version(session, head.id, job.from_version)
        )
        if head is None or version is None:
            raise MoveImpossible(
                f"version {job.from_version} of head {job.head_name} no longer exists",
                code="head_version_not_found",
            )
        if not job.dataset_id or repo.get_dataset(session, job.dataset_id) is None:
            what = f"dataset {job.dataset_id}" if job.dataset_id else "no dataset"
            raise MoveImpossible(
                f"{job.head_name}:{version.version} was trained on {what}, which no longer "
                "exists; a head is moved by retraining on its dataset, so this one cannot be "
                "moved (train a new version from a new dataset instead)",
                code="dataset_not_found",
            )
        return Source(
            head.id, version.version, version.extractor_id, version.blob_key, job.dataset_id
        )


def _score_old(
    blobs: BlobStore,
    source: Source,
    old: dict[str, tuple[np.ndarray, np.ndarray]],
    val_shas: list[str],
    val_labels: list[str],
) -> dict[str, Any]:
    """The old version on the validation images it has features for (all, normally)."""
    head = decode_head(blobs.get(source.blob_key))
    rows = [i for i, sha in enumerate(val_shas) if sha in old]
    result: dict[str, Any] = {
        "version": source.version,
        "extractor_id": source.extractor_id,
        "n_val": len(rows),
    }
    if not rows:
        return result | {"val_top1": None, "val_top5": None, "val_loss": None}
    floats = np.stack([old[val_shas[i]][0] for i in rows])
    bits = np.stack([old[val_shas[i]][1] for i in rows])
    weights = {k: torch.from_numpy(np.asarray(v)) for k, v in head.weights.items()}
    logits = score(head.head_type, weights, floats, bits, head.feature_dim)
    index = {label: i for i, label in enumerate(head.labels)}
    y = torch.tensor([index.get(val_labels[i], -1) for i in rows])
    known = y >= 0  # a label the old version never had counts as a miss
    top1 = float((logits.argmax(1)[known] == y[known]).sum()) / len(rows)
    top5 = topk_accuracy(logits[known], y[known], 5) * int(known.sum()) / len(rows)
    loss = float(F.cross_entropy(logits, y)) if bool(known.all()) else None
    return result | {
        "val_top1": round(top1, 6),
        "val_top5": round(top5, 6),
        "val_loss": None if loss is None else round(loss, 6),
    }


def run_move(
    factory: sessionmaker[Session],
    client: SyncExtractor,
    blobs: BlobStore,
    job: ClaimedJob,
    hb: JobHeartbeat,
) -> tuple[TrainedHead, list[str], dict[str, Any]]:
    """Featurize, retrain, compare; returns what `Worker._succeed` registers."""
    source = read_source(factory, job)
    target = str(job.extractor_id)
    info = client.info_sync(extractor_id=target)  # type: ignore[call-arg]
    ensure_features(
        factory,
        client,
        job.dataset_id,
        blobs=blobs,
        progress_cb=hb.features_progress,
        extractor_id=target,
    )
    try:  # the old version's features were cached when it was trained; fill any gap
        ensure_features(
            factory, client, job.dataset_id, blobs=blobs, extractor_id=source.extractor_id
        )
    except ExtractorError as exc:
        log.warning(
            "job %s: old extractor unavailable, scoring on cached features: %s", job.id, exc
        )
    hb.check()
    with session_scope(factory) as session:
        floats, bits, image_labels, shas = load_features(session, job.dataset_id, target)
        of, ob, _, oshas = load_features(session, job.dataset_id, source.extractor_id)
    if len(image_labels) == 0:
        raise MoveImpossible(
            "the dataset has no image with usable features", code="no_usable_images"
        )
    old = {sha: (of[i], ob[i]) for i, sha in enumerate(oshas)}
    labels = sorted(set(image_labels))
    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[label] for label in image_labels], dtype=np.int64)
    trained = train_head(
        job.head_type,
        floats,
        bits,
        y,
        labels,
        job.params,
        seed=job.seed,
        validation_fraction=job.validation_fraction,
        progress_cb=hb.training_progress,
        should_stop=hb.should_stop,
    )
    # The split train_head drew first from the same seed, over the same rows.
    split = stratified_split(
        torch.from_numpy(y), job.validation_fraction, torch.Generator().manual_seed(job.seed)
    )
    val = split.val.tolist()
    val_shas = [shas[i] for i in val]
    try:
        before = _score_old(blobs, source, old, val_shas, [image_labels[i] for i in val])
    except BlobNotFound as exc:
        raise MoveImpossible(
            f"the head file of version {source.version} is gone", code="head_file_missing"
        ) from exc
    m = trained.metrics
    after = {
        "extractor_id": target,
        "n_val": int(m["n_val"]),
        **{k: m.get(k) for k in ("val_top1", "val_top5", "val_loss")},
    }
    not_worse = (
        None
        if before["val_top1"] is None or after["val_top1"] is None
        else after["val_top1"] >= before["val_top1"]
    )
    digest = hashlib.sha256("\n".join(sorted(val_shas)).encode()).hexdigest()
    m["move"] = {
        "from": before,
        "to": after,
        "same_split": before["n_val"] == after["n_val"] == len(val),
        "split": {
            "seed": job.seed,
            "validation_fraction": job.validation_fraction,
            "n_images": len(shas),
            "n_val": len(val),
            "val_images_sha256": digest,
        },
        "not_worse": not_worse,
        "promote_if_not_worse": job.promote_if_not_worse,
        "promoted": bool(job.promote_if_not_worse and not_worse),
    }
    return trained, labels, info


def settle_aliases(session: Session, job: ClaimedJob, new: HeadVersion) -> None:
    """In the registering transaction: `production` moves to the new version only when promoted.

    A move adds the newest version, which is what a bare reference resolves to when a head has
    no `production` alias; so that nothing an app resolves changes unasked, such a head first
    gets `production` pinned at the version it resolved to until now (recorded in the metrics).
    """
    promoted = bool((new.metrics or {}).get("move", {}).get("promoted"))
    alias = heads_repo.get_alias(session, new.head_id, PRODUCTION)
    if promoted:
        target = new.version
    elif alias is None:
        before = session.scalar(
            select(func.max(HeadVersion.version)).where(
                HeadVersion.head_id == new.head_id, HeadVersion.version != new.version
            )
        )
        if before is None:
            return
        target = int(before)
        metrics = dict(new.metrics)
        metrics["move"] = {**metrics["move"], "pinned_production": target}
        new.metrics = metrics
    else:
        return
    if alias is None:
        session.add(HeadAlias(head_id=new.head_id, alias=PRODUCTION, version=target))
    else:
        alias.version = target
    session.flush()
