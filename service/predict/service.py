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
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy.orm import Session

from service.auth import Principal
from service.errors import Conflict, Unprocessable
from service.heads import evaluate
from service.heads import service as heads
from service.heads.cache import HeadCache
from service.heads.headfile import HeadFile
from service.heads.refs import InvalidHeadRef, parse_ref, parse_ref_list
from service.predict.schemas import MAX_HEADS_PER_REQUEST
from service.storage.blobstore import BlobStore

if TYPE_CHECKING:
    from service.heads.metering import UsageMeter
    from service.http.invalidation import LookupCache


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


@dataclass(frozen=True)
class Gate:
    """What `extractors.gate` decided for a set of extractors, as plain values (cacheable)."""

    registered: frozenset[str]  # extractor ids in the registry
    headers: dict[str, str]  # Deprecation / Sunset, if any of them is deprecated


def _gate_key(planned: list[PlannedHead]) -> tuple[object, ...]:
    return ("gate", tuple(sorted({p.extractor_id for p in planned})))


def plan_cached(
    lookups: LookupCache | None,
    cache: HeadCache,
    principal: Principal,
    refs_text: str,
) -> tuple[list[PlannedHead], Gate] | None:
    """`plan` + `gate` from the process's caches alone (no session, no thread, no blob read), or
    None when any part must come from the database or the blob store (then `plan_and_gate`).
    The lookup cache's entries are dropped by the changes that would alter them
    (service/http/invalidation.py), so this answers what the database would."""
    if lookups is None:
        return None
    try:
        refs = parse_ref_list(refs_text, max_refs=MAX_HEADS_PER_REQUEST)
    except InvalidHeadRef as exc:
        raise heads.invalid_ref(exc) from exc
    planned: list[PlannedHead] = []
    for ref in refs:
        resolved = heads.resolve_cached(lookups, principal, ref)
        if resolved is None:
            return None
        head_file = cache.get(resolved.id)
        if head_file is None:
            return None
        if all(p.ref != resolved.ref for p in planned):
            planned.append(PlannedHead(resolved.head_id, resolved.ref, head_file))
    gate: Gate | None = lookups.get(_gate_key(planned))
    if gate is None:
        return None
    return planned, gate


def plan_and_gate(
    session: Session,
    blobs: BlobStore,
    cache: HeadCache,
    principal: Principal,
    refs_text: str,
) -> tuple[list[PlannedHead], Gate]:
    """`plan`, then the extractor registry's verdict on the heads' extractors (410 for a retired
    one), kept in the lookup cache for `plan_cached` (refusals are never cached)."""
    from service.extractors import service as extractors
    from service.http.invalidation import cache_of

    lookups = cache_of(session)
    token = lookups.token() if lookups is not None else 0
    planned = plan(session, blobs, cache, principal, [refs_text])
    rows, deprecated = extractors.gate(
        session, [(p.head_id, p.ref, p.extractor_id) for p in planned]
    )
    gate = Gate(frozenset(rows), extractors.deprecation_headers(deprecated))
    if lookups is not None:
        lookups.put(_gate_key(planned), gate, token)
    return planned, gate


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
) -> list[dict[str, Any]]:
    """`run_heads` for heads on several extractors: each on its extractor's (floats, bits);
    predictions keep the order the heads were named in."""
    parts = {
        eid: run_heads([p for p in planned if p.extractor_id == eid], *features[eid], names, top_k)
        for eid in extractor_ids(planned)
    }
    return [
        {
            "filename": name,
            "predictions": {
                p.ref: parts[p.extractor_id][i]["predictions"][p.ref]
                for p in planned
                if p.ref in parts[p.extractor_id][i]["predictions"]
            },
        }
        for i, name in enumerate(names)
    ]


def run_heads(
    planned: list[PlannedHead],
    floats: np.ndarray | None,
    bits: np.ndarray | None,
    names: list[str],
    top_k: int,
) -> list[dict[str, Any]]:
    """Evaluate each head on the whole batch; ``names`` label the rows. Results are plain
    dicts of `ImageResult`'s shape, encoded to JSON without building a model per label."""
    per_head: dict[str, list[list[tuple[str, float]]]] = {}
    for p in planned:
        try:
            probs = evaluate.scores(p.head, floats, bits)
        except evaluate.FeatureMismatch as exc:
            raise Conflict(f"Head '{p.ref}': {exc}.", code="extractor_mismatch") from exc
        per_head[p.ref] = evaluate.top_k(probs, p.head.labels, top_k)
    return [
        {
            "filename": name,
            "predictions": {
                ref: [{"label": label, "score": score} for label, score in rows[i]]
                for ref, rows in per_head.items()
            },
        }
        for i, name in enumerate(names)
    ]


def record_usage(
    meter: UsageMeter, planned: list[PlannedHead], principal: Principal, n: int
) -> None:
    """Meter images scored per (head, consuming tenant); the operator's own calls are not billed.
    Counted in memory and written in batches (service/heads/metering.py, its bound)."""
    if principal.tenant_id is None:
        return
    for p in planned:
        meter.add(p.head_id, principal.tenant_id, n)


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
