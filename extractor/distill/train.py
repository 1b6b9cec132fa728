"""Distil the float EfficientNet-Lite0 teacher into the binary extractor, on a 2-core CPU.

Loss per batch (no labels anywhere):
    KL(softmax(t / T) || softmax(s / T)) * T^2          (Hinton et al. 2015; T = 4)
  + cos_weight * (1 - cos(P f_s, f_t))                  (pooled features; P is a throwaway linear)
  + map_weight * mean_k (1 - cos(Q_k m_s^k, m_t^k))     (optional: stage k's map of the student
                                                         and the teacher, pooled to a small grid;
                                                         Q_k a throwaway 1x1 conv, as FitNets'
                                                         hints, Romero et al. 2015)
The teacher labels each augmented (and mixed) view online, on the very crop the student sees
(Beyer et al. 2022, "function matching"). Adam, linear warm-up then cosine decay. Two stages
(ReActNet, Liu et al. 2020): stage 1 keeps one of {weights, activations} real, stage 2 is fully
binary. Latent weights are clipped to [-1, 1] after every step (BinaryNet).

State (`state.pt` in the run dir) holds the model, projection, optimizer, step, the data
generator and the RNG states, written atomically every few minutes: `--resume` continues the
same run exactly, batch for batch. The learning rate is a pure function of the step.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from extractor.checkpoint import checkpoint_provenance, save_checkpoint
from extractor.conversions import repool
from extractor.distill.augment import full_views, mix, sample_views, student_input
from extractor.distill.corpus import Corpus, CorpusConfig, build_corpus
from extractor.distill.latent import LATENT_SUFFIX, load_latent, save_latent
from extractor.distill.targets import TargetStore
from extractor.distill.warmstart import load_trainable
from extractor.layers import set_binarize
from extractor.models import DEFAULT_ARCH, create_model
from extractor.quantizers import clip_latent_weights_
from extractor.teacher import (
    MAP_CHANNELS,
    TEACHER_NAME,
    EfficientNetLite0,
    load_teacher,
    normalize_uint8,
)

__all__ = ["DistillError", "TrainConfig", "Trainer", "lr_at"]

STATE_FILE = "state.pt"
REPOOL_VIEWS = 2048  # corpus views that refit `feature_norm` when export changes the pooling
CL = torch.channels_last


class DistillError(RuntimeError):
    """A run directory that cannot be started, resumed or exported as asked."""


@dataclass
class TrainConfig:
    out: Path
    steps: int | None = None  # fixed length (exactly reproducible, also across --resume)
    minutes: float | None = None  # or a training-time budget: the schedule follows the clock
    arch: str = DEFAULT_ARCH
    arch_overrides: dict[str, Any] = field(default_factory=dict)
    batch: int = 128
    lr: float = 1e-3  # peak; why not higher: docs/distillation.md, "Views, loss and schedule"
    warmup_frac: float = 0.03
    stage1_frac: float = 0.3  # share of the schedule with one of weights/activations real
    stage1_real: str = "weights"  # "weights" (ReActNet), "activations", or "none"
    temperature: float = 4.0
    cos_weight: float = 2.0
    map_weight: float = 0.0  # > 0: also match the teacher's intermediate maps (hint loss)
    map_grid: int = 4  # their pooled grid, online; a target store's own grid replaces it
    teacher_size: int = 128  # the teacher sees the crop at this size; the student, downsampled
    crop_scale: tuple[float, float] = (0.25, 1.0)
    p_mixup: float = 0.4
    p_cutmix: float = 0.4
    seed: int = 0
    device: str = "cpu"
    threads: int = 2
    ckpt_minutes: float = 5.0
    eval_minutes: float = 10.0
    log_seconds: float = 30.0
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    command: str = ""
    init: str | None = None  # warm start from this packed checkpoint (distill.warmstart)
    targets: str | None = None  # a target store (targets.py): fixed views, no teacher per step

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        corpus = corpus_config_from_json(d.pop("corpus"))
        d["crop_scale"] = tuple(d["crop_scale"])
        return cls(**{**d, "out": Path(d["out"]), "corpus": corpus})


def corpus_config_from_json(d: dict[str, Any]) -> CorpusConfig:
    """A CorpusConfig from its JSON form (paths and tuples restored)."""
    corpus = dict(d)
    for k in ("cache_dir", "clipart_root", "fashion_root"):
        if corpus.get(k) is not None:
            corpus[k] = Path(corpus[k])
    # Runs recorded before a field existed keep what they trained on: no exclusion and no
    # wallpapers (the defaults changed with the out-of-domain rule).
    corpus["clipart_exclude"] = tuple(corpus.get("clipart_exclude", ()))
    corpus["wallpaper_roots"] = tuple(Path(r) for r in corpus.get("wallpaper_roots", ()))
    return CorpusConfig(**corpus)


def lr_at(progress: float, peak: float, warmup_frac: float) -> float:
    """Linear warm-up to `peak` over `warmup_frac` of the run, then cosine decay to zero.

    `progress` in [0, 1] is steps done / steps planned, or, in a time-budgeted run, training
    seconds / budget: on a shared 2-core machine the speed varies too much to fix steps ahead.
    """
    p = min(max(progress, 0.0), 1.0)
    if p < warmup_frac:
        return peak * max(p / warmup_frac, 0.01)
    t = (p - warmup_frac) / max(1e-9, 1 - warmup_frac)
    return peak * 0.5 * (1 + math.cos(math.pi * t))


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Trainer:
    """One distillation run in `cfg.out`; `run()` trains to the end, `export()` packs it."""

    def __init__(self, cfg: TrainConfig, *, echo: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.echo = echo or (lambda s: print(s, flush=True))
        torch.set_num_threads(cfg.threads)
        self.device = torch.device(cfg.device)
        torch.manual_seed(cfg.seed)
        # channels-last: faster convolutions on CPU (docs/distillation.md, "Views, loss and
        # schedule")
        # Any: the registry returns nn.Module; the model contract (docs/contracts.md) adds
        # forward_features/forward_head/feature_dim/pretrained_cfg, which nn.Module cannot type.
        student: Any = create_model(cfg.arch, **cfg.arch_overrides)
        self.student = student.to(self.device, memory_format=CL)
        self.teacher = load_teacher(self.device, fold_bn=True)
        self.teacher.to(memory_format=CL)  # type: ignore[call-overload]
        dims = int(self.student.feature_dim), EfficientNetLite0.FEATURE_DIM
        self.proj = nn.Linear(*dims).to(self.device)  # throwaway: student -> teacher features
        self.params = list(self.student.parameters()) + list(self.proj.parameters())
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.rewarm_from: float | None = None  # progress at which a latent continuation began
        self.images_seen = 0
        self.train_seconds = 0.0
        self.history: list[dict[str, Any]] = []
        self.baseline: dict[str, float] | None = None
        self.store = TargetStore(Path(cfg.targets)) if cfg.targets else None
        if self.store is not None:
            if not self.store.complete:
                raise DistillError(f"target store {cfg.targets} is not complete; build it first")
            # The store fixes what the student sees: its corpus (also for validation and export
            # calibration) and its teacher resolution.
            cfg.corpus = self.store.config.corpus
            cfg.teacher_size = self.store.config.teacher_size
            cfg.map_grid = self.store.config.map_grid
        # Hint loss: one throwaway 1x1 conv per matched stage, student width -> teacher's.
        self.map_proj = nn.ModuleList()
        if cfg.map_weight > 0:
            if not cfg.map_grid or not hasattr(self.student, "forward_maps"):
                raise DistillError(
                    "--map-weight needs a student with forward_maps and teacher maps: build the "
                    "target store with --map-grid"
                )
            widths = self.student.config.widths
            self.map_proj = nn.ModuleList(
                nn.Conv2d(cs, ct, 1) for cs, ct in zip(widths, MAP_CHANNELS, strict=False)
            ).to(self.device)
        self.params += list(self.map_proj.parameters())
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr)
        self.corpus: Corpus = build_corpus(cfg.corpus)
        self._val = self._val_targets()

    # ---- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_json(),
            "student": self.student.state_dict(),
            "proj": self.proj.state_dict(),
            "map_proj": self.map_proj.state_dict(),
            "opt": self.opt.state_dict(),
            "gen": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
            "step": self.step,
            "images_seen": self.images_seen,
            "train_seconds": self.train_seconds,
            "history": self.history,
            "baseline": self.baseline,
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.step, self.train_seconds = int(s["step"]), float(s["train_seconds"])
        self._set_stage()  # the stage decides which parameters the forward uses; set it first
        self.student.load_state_dict(s["student"])
        self.proj.load_state_dict(s["proj"])
        self.map_proj.load_state_dict(s.get("map_proj", {}))
        self.opt.load_state_dict(s["opt"])
        self.gen.set_state(s["gen"])
        torch.set_rng_state(s["torch_rng"])
        np.random.set_state(s["numpy_rng"])
        random.setstate(s["python_rng"])
        self.images_seen = int(s["images_seen"])
        self.history = list(s["history"])
        self.baseline = s["baseline"]

    def save(self) -> Path:
        """state.pt (exact resume) and the small latent file (continue in a later session)."""
        path = self.out / STATE_FILE
        _atomic_save(self.state_dict(), path)
        save_latent(self, self.out / f"run{LATENT_SUFFIX}")
        return path

    @classmethod
    def from_latent(cls, path: Path, out: Path, **overrides: Any) -> Trainer:
        """Continue a run from its latent file (`latent.py`) in a new run directory `out`.

        Same config, step and schedule position (`overrides`, e.g. a longer `minutes`, stretch
        the schedule); Adam's moments start afresh, so the rate re-warms over `warmup_frac`.
        Batches differ from the original run's (its data generator is not kept).
        """
        if (Path(out) / STATE_FILE).exists():
            raise DistillError(f"{out} already holds a run: pass --resume or another --out")
        meta, states = load_latent(Path(path))
        cfg = dataclasses.replace(TrainConfig.from_json(meta["config"]), out=Path(out), **overrides)
        trainer = cls(cfg)
        trainer.step, trainer.train_seconds = int(meta["step"]), float(meta["train_seconds"])
        trainer._set_stage()
        trainer.student.load_state_dict(states["student"])
        trainer.proj.load_state_dict(states["proj"])
        if "map_proj" in states:  # else a hint loss added on continuation starts afresh
            trainer.map_proj.load_state_dict(states["map_proj"])
        trainer.images_seen = int(meta["images_seen"])
        trainer.history = list(meta["history"])
        trainer.baseline = meta["baseline"]
        trainer.gen.manual_seed(cfg.seed + trainer.step)
        trainer.rewarm_from = trainer.progress()
        return trainer

    @classmethod
    def resume(cls, out: Path, **overrides: Any) -> Trainer:
        """Rebuild the run stored in `out` (config from the state; `overrides` e.g. device)."""
        path = Path(out) / STATE_FILE
        if not path.exists():
            raise DistillError(f"nothing to resume: {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=False)
        cfg = TrainConfig.from_json(state["config"])
        cfg = dataclasses.replace(cfg, **overrides)
        trainer = cls(cfg)
        trainer.load_state_dict(state)
        return trainer

    # ---- schedule -------------------------------------------------------------------------
    def progress(self) -> float:
        """Share of the run done: steps / planned steps, or training seconds / budget."""
        if self.cfg.steps:
            return self.step / self.cfg.steps
        if self.cfg.minutes:
            return self.train_seconds / (self.cfg.minutes * 60)
        raise DistillError("give --steps or --minutes")

    def finished(self) -> bool:
        return self.progress() >= 1.0

    def in_stage1(self) -> bool:
        return self.cfg.stage1_real != "none" and self.progress() < self.cfg.stage1_frac

    def _set_stage(self) -> int:
        if self.in_stage1():
            real = self.cfg.stage1_real
            set_binarize(self.student, activations=real != "activations", weights=real != "weights")
            return 1
        set_binarize(self.student, activations=True, weights=True)
        return 2

    # ---- data and loss --------------------------------------------------------------------
    def _batch(self, gen: torch.Generator) -> Tensor:
        c = self.cfg
        x = sample_views(self.corpus.train, c.batch, c.teacher_size, gen, scale=c.crop_scale)
        return mix(x, gen, c.p_mixup, c.p_cutmix).to(self.device)

    @torch.no_grad()
    def _teach(self, x: Tensor, grid: int = 0) -> tuple[Tensor, Tensor, Tensor | None]:
        """(features, logits, intermediate maps pooled to grid x grid, or None if grid is 0)."""
        t_in = normalize_uint8(x).contiguous(memory_format=CL)
        maps = None
        if grid:
            f, maps = self.teacher.forward_maps(t_in, grid)
        else:
            f = self.teacher.forward_features(t_in)
        return f, self.teacher.forward_head(f), maps

    def _student(self, x: Tensor, maps: bool = False) -> tuple[Tensor, Tensor, list[Tensor]]:
        """(features, logits, the stage maps when asked, else [])."""
        s_in = student_input(x, self.student.pretrained_cfg).contiguous(memory_format=CL)
        if maps:
            f, stage_maps = self.student.forward_maps(s_in)
        else:
            f, stage_maps = self.student.forward_features(s_in), []
        return f, self.student.forward_head(f), stage_maps

    def _map_loss(self, student_maps: list[Tensor], teacher_maps: Tensor) -> Tensor:
        """Mean over matched stages of 1 - cos(Q_k pool(m_s^k), m_t^k), maps flattened."""
        g = self.cfg.map_grid
        targets = teacher_maps.split([c * g * g for c in MAP_CHANNELS], dim=1)
        losses = [
            1 - F.cosine_similarity(q(F.adaptive_avg_pool2d(m, g)).flatten(1), t, dim=-1).mean()
            for q, m, t in zip(self.map_proj, student_maps, targets, strict=False)
        ]
        return torch.stack(losses).mean()

    def _loss(self, sf: Tensor, sl: Tensor, tf: Tensor, tl: Tensor) -> tuple[Tensor, Tensor]:
        t = self.cfg.temperature
        kl = F.kl_div(
            F.log_softmax(sl / t, -1),
            F.log_softmax(tl / t, -1),
            log_target=True,
            reduction="batchmean",
        ) * (t * t)
        cos = 1 - F.cosine_similarity(self.proj(sf), tf, dim=-1).mean()
        return kl, cos

    def train_step(self) -> dict[str, float]:
        self._set_stage()
        p = (self.step + 0.5) / self.cfg.steps if self.cfg.steps else self.progress()
        lr = lr_at(p, self.cfg.lr, self.cfg.warmup_frac)
        if self.rewarm_from is not None:  # fresh Adam moments: ramp up again
            lr *= min(1.0, max((p - self.rewarm_from) / self.cfg.warmup_frac, 0.01))
        for g in self.opt.param_groups:
            g["lr"] = lr
        hints = len(self.map_proj) > 0
        if self.store is not None:
            idx = torch.randint(len(self.store), (self.cfg.batch,), generator=self.gen)
            x, tf, tl, tm = self.store.batch(idx)
            x, tf, tl = x.to(self.device), tf.to(self.device), tl.to(self.device)
            tm = None if tm is None else tm.to(self.device)
        else:
            x = self._batch(self.gen)
            tf, tl, tm = self._teach(x, self.cfg.map_grid if hints else 0)
        sf, sl, sm = self._student(x, maps=hints)
        kl, cos = self._loss(sf, sl, tf, tl)
        loss = kl + self.cfg.cos_weight * cos
        hint = self._map_loss(sm, tm) if hints and tm is not None else torch.zeros(())
        loss = loss + self.cfg.map_weight * hint
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        clip_latent_weights_(self.student)
        self.step += 1
        self.images_seen += x.shape[0]
        return {
            "loss": loss.item(),
            "kl": kl.item(),
            "cos": cos.item(),
            "map": hint.item(),
            "lr": lr,
        }

    # ---- evaluation -----------------------------------------------------------------------
    def _val_targets(self) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
        out = {}
        for src in self.corpus.val:
            x = full_views(src, self.cfg.teacher_size)
            fs, ls, _ = zip(*(self._teach(c.to(self.device)) for c in x.split(128)), strict=True)
            out[src.name] = (x, torch.cat(fs).cpu(), torch.cat(ls).cpu())
        return out

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Teacher top-1 agreement, feature cosine and KL on the held-out validation views."""
        was_training = self.student.training
        self.student.eval()
        res: dict[str, float] = {}
        agree_all, n_all, cos_all = 0.0, 0, 0.0
        for name, (x, tf, tl) in self._val.items():
            sfs, sls, _ = zip(
                *(self._student(c.to(self.device)) for c in x.split(128)), strict=True
            )
            sf, sl = torch.cat(sfs), torch.cat(sls)
            tf, tl = tf.to(self.device), tl.to(self.device)
            agree = (sl.argmax(-1) == tl.argmax(-1)).float()
            cos = F.cosine_similarity(self.proj(sf), tf, dim=-1)
            kl, _ = self._loss(sf, sl, tf, tl)
            res[f"{name}/agree"] = agree.mean().item()
            res[f"{name}/cos"] = cos.mean().item()
            res[f"{name}/kl"] = kl.item()
            agree_all += agree.sum().item()
            cos_all += cos.sum().item()
            n_all += len(agree)
        res["agree"] = agree_all / max(1, n_all)
        res["cos"] = cos_all / max(1, n_all)
        self.student.train(was_training)
        return res

    # ---- the loop -------------------------------------------------------------------------
    def _log(self, line: str, record: dict[str, Any] | None = None) -> None:
        self.echo(line)
        with open(self.out / "train.log", "a") as f:
            f.write(line + "\n")
        if record is not None:
            self.history.append(record)
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _eval_and_log(self) -> dict[str, float]:
        res = self.evaluate()
        if self.baseline is None and self.step == 0:
            self.baseline = res
        detail = " ".join(f"{k}={v:.3f}" for k, v in res.items() if "/" in k and "kl" not in k)
        self._log(
            f"eval step {self.step}: agree {res['agree']:.3f} cos {res['cos']:.3f} ({detail})",
            {
                "kind": "eval",
                "step": self.step,
                "images": self.images_seen,
                "minutes": self.train_seconds / 60,
                **res,
            },
        )
        return res

    def run(self) -> None:
        """Train to the end of the schedule, logging, evaluating and checkpointing on the way."""
        c = self.cfg
        self.progress()  # raises without --steps/--minutes
        if self.step == 0:
            self._log(f"corpus: {json.dumps(self.corpus.summary())}")
            self._log(f"config: {json.dumps(c.to_json())}")
            if c.init:
                self._warm_start(Path(c.init))
            self._eval_and_log()
        else:
            self._log(f"resumed at step {self.step}, progress {self.progress():.3f}")
        t_ckpt = t_eval = t_log = time.monotonic()
        window: list[dict[str, float]] = []
        window_t, window_imgs = time.monotonic(), 0
        while not self.finished():
            t0 = time.monotonic()
            window.append(self.train_step())
            now = time.monotonic()
            self.train_seconds += now - t0
            window_imgs += c.batch
            if now - t_log >= c.log_seconds or self.finished():
                ips = window_imgs / max(1e-9, now - window_t)
                avg = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                p = self.progress()
                if c.steps:
                    eta = (c.steps - self.step) * (now - window_t) / len(window)
                else:
                    eta = (1 - p) * (c.minutes or 0) * 60
                stage = 1 if self.in_stage1() else 2
                hint = f" map {avg['map']:.4f}" if len(self.map_proj) else ""
                self._log(
                    f"step {self.step} ({100 * p:.1f}%) stage {stage} {ips:.1f} img/s "
                    f"loss {avg['loss']:.4f} (kl {avg['kl']:.4f} cos {avg['cos']:.4f}{hint}) "
                    f"lr {avg['lr']:.2e} eta {eta / 60:.1f} min",
                    {
                        "kind": "train",
                        "step": self.step,
                        "images": self.images_seen,
                        "minutes": self.train_seconds / 60,
                        "ips": ips,
                        "stage": stage,
                        **avg,
                    },
                )
                t_log, window_t, window_imgs, window = now, now, 0, []
            if now - t_eval >= c.eval_minutes * 60:
                self._eval_and_log()
                t_eval = time.monotonic()
            if now - t_ckpt >= c.ckpt_minutes * 60:
                self.save()
                t_ckpt = time.monotonic()
        self._set_stage()
        self._eval_and_log()
        self.save()
        self._log(
            f"done: {self.step} steps, {self.images_seen} images, {self.train_seconds / 60:.1f} min"
        )

    def _warm_start(self, path: Path) -> None:
        """Continue from a packed checkpoint: its signs, affines and real layers (BN statistics
        measured on corpus views); the head and the feature projection start afresh."""
        gen = torch.Generator().manual_seed(self.cfg.seed + 1)
        views = sample_views(self.corpus.train, 256, self.cfg.teacher_size, gen)
        x = student_input(views, self.student.pretrained_cfg).to(self.device)
        load_trainable(self.student, path, x.contiguous(memory_format=CL), seed=self.cfg.seed)
        self._fit_readouts(gen)
        self._log(f"warm start from {path}")

    @torch.no_grad()
    def _fit_readouts(self, gen: torch.Generator, batches: int = 16, ridge: float = 1.0) -> None:
        """Ridge-regress the head (to teacher logits) and the projection (to teacher features)
        on training views: a warm-started body then learns from sensible targets at once,
        instead of from the gradients of a random head."""
        was_training = self.student.training
        self.student.eval()
        feats, logits, tfeats = [], [], []
        for _ in range(batches):
            x = self._batch(gen)
            tf, tl, _ = self._teach(x)
            feats.append(self._student(x)[0])
            logits.append(tl)
            tfeats.append(tf)
        s = torch.cat(feats).float()
        design = torch.cat([s, torch.ones(len(s), 1, device=s.device)], 1)  # bias column
        gram = design.T @ design + ridge * torch.eye(design.shape[1], device=s.device)
        for layer, target in ((self.student.head, logits), (self.proj, tfeats)):
            w = torch.linalg.solve(gram, design.T @ torch.cat(target).float())
            layer.weight.copy_(w[:-1].T)
            layer.bias.copy_(w[-1])
        self.student.train(was_training)

    # ---- export ---------------------------------------------------------------------------
    def provenance(self) -> dict[str, Any]:
        last = next((h for h in reversed(self.history) if h.get("kind") == "eval"), None)
        return {
            "kind": "distilled",
            "teacher": TEACHER_NAME,
            "corpus": self.corpus.summary(),
            "targets": None if self.store is None else self.store.summary(),
            "steps": self.step,
            "images_seen": self.images_seen,
            "minutes": round(self.train_seconds / 60, 1),
            "command": self.cfg.command,
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "loss": "KL(T=4)*T^2 + cos_weight*(1-cos) on teacher pooled features"
            + (f" + {self.cfg.map_weight}*(1-cos) on 3 stage maps" if len(self.map_proj) else ""),
            "heldout_agreement": None if last is None else round(last["agree"], 4),
            "heldout_cosine": None if last is None else round(last["cos"], 4),
            "random_init_agreement": None
            if not self.baseline
            else round(self.baseline["agree"], 4),
            **self._init_provenance(),
        }

    def _init_provenance(self) -> dict[str, Any]:
        """Where a warm-started run began: the initial checkpoint's id and its own provenance."""
        if not self.cfg.init:
            return {}
        ident, before = checkpoint_provenance(Path(self.cfg.init))
        keep = ("steps", "images_seen", "minutes", "command", "date", "init")
        return {"init": {"id": ident, **{k: before[k] for k in keep if k in before}}}

    def export(self, path: Path, feature_grid: int | None = None, pool: str | None = None) -> str:
        """Pack the student; `feature_grid` / `pool` change how its final map is pooled.

        Distillation trains on globally averaged features (the teacher's are too); pooling has
        no parameters, so the trained network can serve another grid or pooling, with its
        feature-centring BN refitted on corpus views (`extractor.conversions.repool`).
        """
        if self.in_stage1():
            raise DistillError(
                f"step {self.step} is still in stage 1; export needs a fully binary net"
            )
        self._set_stage()
        self.student.eval()
        model = copy.deepcopy(self.student).cpu()
        model.to(memory_format=torch.contiguous_format)
        ident = save_checkpoint(model, path, self.provenance())
        if feature_grid is None and pool is None:
            return ident
        views = calibration_views(self.corpus, model.pretrained_cfg, self.cfg.teacher_size)
        note = "chosen at export; the parent is the network as trained"
        return repool(path, path, views, note, pool=pool, feature_grid=feature_grid)


def calibration_views(
    corpus: Corpus, pretrained_cfg: dict[str, Any], side: int = 128, seed: int = 0
) -> Tensor:
    """REPOOL_VIEWS random corpus training views, preprocessed for the student."""
    gen = torch.Generator().manual_seed(seed)
    return student_input(sample_views(corpus.train, REPOOL_VIEWS, side, gen), pretrained_cfg)


def command_line() -> str:
    return " ".join(["headhub", *sys.argv[1:]]) if sys.argv else ""
