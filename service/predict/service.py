"""Prediction: resolve heads, get features once per extractor, evaluate every head, meter usage.

Resolution happens entirely before the extractor is called, so a bad reference costs no image
pass; the resolved heads are copied into plain values so the endpoint can end its database
transaction while it waits on the extractor. Heads may be pinned to different extractors: the
images go once to each extractor needed (`extractor_ids`), and each head is evaluated on its own
extractor's features.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from service.auth import Principal
from service.errors import Conflict, Unprocessable
from service.heads import evaluate
from service.heads import repository as heads_repo
from service.heads import service as heads
from service.heads.cache import HeadCache
from service.heads.headfile import HeadFile
from service.heads.refs import InvalidHeadRef, parse_ref, parse_ref_list
from service.predict.schemas import MAX_HEADS_PER_REQUEST, ImageResult, Prediction
from service.storage.blobstore import BlobStore


@dataclass(frozen=True)
class PlannedHead:
    head_id: str
    ref: str  # resolved: owner/name:version
    head: HeadFile

    @property
    def extractor_id(self) -> str:
        return self.head.extractor_id


def extractor_ids(planned: list[PlannedHead]) -> list[str]:
    """The extractors the heads need, each once, in the order the heads were named."""
    return list(dict.fromkeys(p.extractor_id for p in planned))


def plan(
    session: Session,
    blobs: BlobStore,
    cache: HeadCache,
    principal: Principal,
    refs_text: list[str],
) -> list[PlannedHead]:
    """Resolve and load every head; any failure is raised before a feature is computed."""
    try:
        refs = (
            parse_ref_list(refs_text[0], max_refs=MAX_HEADS_PER_REQUEST)
            if len(refs_text) == 1
            else list(dict.fromkeys(parse_ref(r) for r in refs_text))
        )
    except InvalidHeadRef as exc:
        raise heads.invalid_ref(exc) from exc
    planned: list[PlannedHead] = []
    for ref in refs:
        resolved = heads.resolve_for_use(session, principal, ref)
        head_file = heads.load_head(blobs, cache, resolved)
        if all(p.ref != resolved.ref for p in planned):
            planned.append(PlannedHead(resolved.head_id, resolved.ref, head_file))
    return planned


def check_extractor(planned: list[PlannedHead], extractor_id: str) -> None:
    for p in planned:
        if p.head.extractor_id != extractor_id:
            raise mismatch(p, extractor_id)


def mismatch(p: PlannedHead, extractor_id: str | None) -> Conflict:
    other = f"not on {extractor_id[:12]}..." if extractor_id else "which no extractor serves"
    return Conflict(
        f"Head '{p.ref}' was trained on extractor {p.head.extractor_id[:12]}..., {other}; "
        "retrain it, move it, or use a matching extractor.",
        code="extractor_mismatch",
    )


def run_heads_per_extractor(
    planned: list[PlannedHead],
    features: dict[str, tuple[np.ndarray | None, np.ndarray | None]],
    names: list[str],
    top_k: int,
) -> list[ImageResult]:
    """`run_heads` for heads on several extractors: each on its extractor's (floats, bits);
    predictions keep the order the heads were named in."""
    parts = {
        eid: run_heads([p for p in planned if p.extractor_id == eid], *features[eid], names, top_k)
        for eid in extractor_ids(planned)
    }
    return [
        ImageResult(
            filename=name,
            predictions={
                p.ref: parts[p.extractor_id][i].predictions[p.ref]
                for p in planned
                if p.ref in parts[p.extractor_id][i].predictions
            },
        )
        for i, name in enumerate(names)
    ]


def run_heads(
    planned: list[PlannedHead],
    floats: np.ndarray | None,
    bits: np.ndarray | None,
    names: list[str],
    top_k: int,
) -> list[ImageResult]:
    """Evaluate each head on the whole batch; ``names`` label the rows."""
    per_head: dict[str, list[list[tuple[str, float]]]] = {}
    for p in planned:
        try:
            probs = evaluate.scores(p.head, floats, bits)
        except evaluate.FeatureMismatch as exc:
            raise Conflict(f"Head '{p.ref}': {exc}.", code="extractor_mismatch") from exc
        per_head[p.ref] = evaluate.top_k(probs, p.head.labels, top_k)
    return [
        ImageResult(
            filename=name,
            predictions={
                ref: [Prediction(label=label, score=score) for label, score in rows[i]]
                for ref, rows in per_head.items()
            },
        )
        for i, name in enumerate(names)
    ]


def record_usage(
    session: Session, planned: list[PlannedHead], principal: Principal, n: int
) -> None:
    """Meter images scored per (head, consuming tenant); the operator's own calls are not billed."""
    if principal.tenant_id is None:
        return
    for p in planned:
        heads_repo.add_usage(session, p.head_id, principal.tenant_id, n)


def parse_feature_input(
    features: list[list[float]] | list[str], planned: list[PlannedHead]
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Client features -> (floats, bits), checked against every head's width (409 otherwise)."""
    if isinstance(features[0], str):
        try:
            rows = [base64.b64decode(s, validate=True) for s in features]  # type: ignore[arg-type]
        except (binascii.Error, ValueError) as exc:
            raise Unprocessable("features: not valid base64.", code="invalid_features") from exc
        if len({len(r) for r in rows}) != 1:
            raise Unprocessable("features: rows differ in length.", code="invalid_features")
        for p in planned:
            if p.head.head_type != "binary":
                raise Unprocessable(
                    f"Head '{p.ref}' is a {p.head.head_type} head and needs float features; "
                    "packed sign bits serve binary heads only.",
                    code="float_features_required",
                )
        bits = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), -1)
        return None, bits
    if len({len(r) for r in features}) != 1:
        raise Unprocessable("features: rows differ in length.", code="invalid_features")
    floats = np.asarray(features, dtype=np.float32)
    if not np.isfinite(floats).all():
        raise Unprocessable("features: NaN or infinite values.", code="invalid_features")
    return floats, None
