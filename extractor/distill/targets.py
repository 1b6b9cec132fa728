"""Teacher targets computed once for fixed views, so that a run's CPU goes to the student.

Online distillation runs the teacher on every batch; at 224 px it was about half of each step on
two cores. A target store instead draws a fixed set of views from the corpus (random-resized
crops with flips and a light colour jitter, seeded), runs the teacher on each once at
`teacher_size`, and keeps three arrays side by side on disk:

    views.u8     (N, 3, S, S) uint8   the view, downsampled to `store_side` for the student
    logits.f16   (N, 1000)    float16 the teacher's logits on the full-size view
    feats.f16    (N, 1280)    float16 the teacher's pooled features
    maps.f16     (N, M)       float16 with `map_grid` > 0: three of the teacher's intermediate maps,
                              each pooled to map_grid x map_grid (`EfficientNetLite0.forward_maps`)

`meta.json` records the config, each source's range of rows and how many rows are done. Views
are drawn in chunks whose generator is seeded by (seed, source, chunk), so building can stop
at any chunk and `build_targets` continues where it left off, with identical rows.
Every source gets `views * weight` rows (its corpus sampling weight): the store is the
corpus mix, fixed. Since no teacher runs during training, the student cannot see mixed images
(mixup/cutmix need the teacher to label the mix) or fresh crops; what that trade measured:
docs/distillation.md, "Views, loss and schedule".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from extractor.distill.augment import sample_views
from extractor.distill.corpus import Corpus, CorpusConfig, build_corpus
from extractor.teacher import (
    MAP_CHANNELS,
    TEACHER_NAME,
    EfficientNetLite0,
    load_teacher,
    normalize_uint8,
)

__all__ = ["TargetConfig", "TargetStore", "build_targets"]

META = "meta.json"
CHUNK = 64  # views per teacher batch; also the unit of resumption


@dataclass
class TargetConfig:
    views: int = 48_000  # fixed views in all, split across sources by corpus weight
    teacher_size: int = 224  # the teacher's input side (its native resolution)
    store_side: int = 160  # the student's copy of each view; any student input up to this
    crop_scale: tuple[float, float] = (0.3, 1.0)  # random-resized crop area
    jitter: float = 0.2  # brightness/contrast/saturation jitter, 10% greyscale
    seed: int = 0
    threads: int = 2
    map_grid: int = 0  # > 0: also store the teacher's intermediate maps pooled to this grid
    corpus: CorpusConfig = field(default_factory=lambda: CorpusConfig(side=224))

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    @property
    def map_dim(self) -> int:
        return self.map_grid**2 * sum(MAP_CHANNELS)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TargetConfig:
        from extractor.distill.train import corpus_config_from_json

        d = dict(d)
        corpus = corpus_config_from_json(d.pop("corpus"))
        return cls(**{**d, "crop_scale": tuple(d["crop_scale"]), "corpus": corpus})


def _allocate(corpus: Corpus, views: int) -> list[dict[str, Any]]:
    """Each source's contiguous range of rows, sized by its sampling weight."""
    ranges, start = [], 0
    for src in corpus.train:
        n = round(views * src.weight)
        if n:
            ranges.append({"name": src.name, "start": start, "count": n})
            start += n
    return ranges


def _chunk_seed(seed: int, name: str, k: int) -> int:
    digest = hashlib.sha256(f"{seed}/{name}/{k}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class TargetStore:
    """Read side of a target store directory (memory-mapped; nothing is loaded up front)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        meta_path = self.root / META
        if not meta_path.exists():
            raise FileNotFoundError(f"no target store at {self.root} ({META} is missing)")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        self.config = TargetConfig.from_json(self.meta["config"])
        self.size = int(self.meta["size"])
        s = self.config.store_side
        mode: Literal["r+", "r"] = "r+" if not self.complete else "r"
        self.views = np.memmap(self.root / "views.u8", np.uint8, mode, shape=(self.size, 3, s, s))
        self.logits = np.memmap(self.root / "logits.f16", np.float16, mode, shape=(self.size, 1000))
        self.feats = np.memmap(
            self.root / "feats.f16",
            np.float16,
            mode,
            shape=(self.size, EfficientNetLite0.FEATURE_DIM),
        )
        self.maps = None
        if self.config.map_grid:
            shape = (self.size, self.config.map_dim)
            self.maps = np.memmap(self.root / "maps.f16", np.float16, mode, shape=shape)

    @property
    def complete(self) -> bool:
        return int(self.meta["done_chunks"]) >= int(self.meta["total_chunks"])

    def __len__(self) -> int:
        return self.size

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(views float 0..255 (B, 3, S, S), teacher features (B, 1280), logits (B, 1000),
        intermediate maps (B, map_dim) or None without them)."""
        order = np.sort(idx.numpy())  # sorted reads are kinder to the page cache

        def rows(a: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(a[order])).float()

        maps = None if self.maps is None else rows(self.maps)
        return rows(self.views), rows(self.feats), rows(self.logits), maps

    def summary(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "size": self.size,
            "teacher_size": self.config.teacher_size,
            "store_side": self.config.store_side,
            "map_grid": self.config.map_grid,
            "sources": self.meta["sources"],
            "corpus": self.meta["corpus"],
        }


def _create(cfg: TargetConfig, root: Path, corpus: Corpus) -> None:
    ranges = _allocate(corpus, cfg.views)
    size = sum(r["count"] for r in ranges)
    s = cfg.store_side
    arrays = [
        ("views.u8", (size, 3, s, s), np.uint8),
        ("logits.f16", (size, 1000), np.float16),
        ("feats.f16", (size, EfficientNetLite0.FEATURE_DIM), np.float16),
    ]
    if cfg.map_grid:
        arrays.append(("maps.f16", (size, cfg.map_dim), np.float16))
    for name, shape, dtype in arrays:
        np.memmap(root / name, dtype, "w+", shape=shape).flush()
    chunks = sum(-(-r["count"] // CHUNK) for r in ranges)
    _write_meta(
        root,
        {
            "config": cfg.to_json(),
            "teacher": TEACHER_NAME,
            "corpus": corpus.summary(),
            "sources": ranges,
            "size": size,
            "total_chunks": chunks,
            "done_chunks": 0,
            "teacher_seconds": 0.0,
            "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    )


def _write_meta(root: Path, meta: dict[str, Any]) -> None:
    tmp = root / f"{META}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, root / META)


def build_targets(
    cfg: TargetConfig,
    root: Path,
    *,
    device: str = "cpu",
    echo: Callable[[str], None] = print,
    max_chunks: int | None = None,
) -> TargetStore:
    """Create or continue the store in `root`; returns it (complete unless `max_chunks` hit)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    corpus = build_corpus(cfg.corpus)
    if (root / META).exists():
        stored = json.loads((root / META).read_text())["config"]
        if stored != cfg.to_json():
            raise ValueError(f"{root} holds a store of another config; choose a new directory")
    else:
        _create(cfg, root, corpus)
    store = TargetStore(root)
    teacher = load_teacher(torch.device(device), fold_bn=True)
    teacher.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    by_name = {s.name: s for s in corpus.train}
    plan = [
        (r, k)
        for r in store.meta["sources"]
        for k in range(-(-r["count"] // CHUNK))
    ]  # fmt: skip
    done = int(store.meta["done_chunks"])
    t_log = time.monotonic()
    for i, (r, k) in enumerate(plan[done:], start=done):
        if max_chunks is not None and i - done >= max_chunks:
            break
        t0 = time.monotonic()
        n = min(CHUNK, r["count"] - k * CHUNK)
        gen = torch.Generator().manual_seed(_chunk_seed(cfg.seed, r["name"], k))
        x = sample_views(
            [by_name[r["name"]]], n, cfg.teacher_size, gen, scale=cfg.crop_scale, jitter=cfg.jitter
        )
        rows = slice(r["start"] + k * CHUNK, r["start"] + k * CHUNK + n)
        with torch.no_grad():
            t_in = normalize_uint8(x).to(device).contiguous(memory_format=torch.channels_last)
            if cfg.map_grid:
                f, maps = teacher.forward_maps(t_in, cfg.map_grid)
                store.maps[rows] = maps.cpu().half().numpy()  # type: ignore[index]
            else:
                f = teacher.forward_features(t_in)
            lg = teacher.forward_head(f)
        small = F.interpolate(x, size=cfg.store_side, mode="bilinear", antialias=True)
        store.views[rows] = small.round().clamp(0, 255).to(torch.uint8).numpy()
        store.feats[rows] = f.cpu().half().numpy()
        store.logits[rows] = lg.cpu().half().numpy()
        for a in (store.views, store.feats, store.logits, store.maps):
            if a is not None:
                a.flush()
        store.meta["done_chunks"] = i + 1
        store.meta["teacher_seconds"] += time.monotonic() - t0
        _write_meta(root, store.meta)
        if time.monotonic() - t_log > 30 or i + 1 == len(plan):
            rate = CHUNK * (i + 1) / max(store.meta["teacher_seconds"], 1e-9)
            echo(f"targets: chunk {i + 1}/{len(plan)} ({r['name']}), {rate:.1f} views/s overall")
            t_log = time.monotonic()
    return TargetStore(root)
