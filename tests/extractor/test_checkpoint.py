"""Packed checkpoints: bit-exact reload, 1 bit per weight, id = SHA-256, typed errors, CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from extractor.calibration import calibrate_bn
from extractor.checkpoint import (
    DEFAULT_CHECKPOINT,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from extractor.cli import app
from extractor.conversions import repool, restamp_preprocessing
from extractor.layers import BinaryUnitBN, FoldedBinaryLayer, set_binarize
from extractor.models import DEFAULT_ARCH, create_model
from extractor.packing import pack_signs, packed_width
from extractor.quantizers import clip_latent_weights_

TINY = {
    "birealnet_112": {"widths": (8, 16, 16, 24), "stem_width": 8, "input_size": 32},
    "binary_alexnet": {"conv_widths": (8, 8, 8, 8, 8), "fc_width": 24, "input_size": 96},
}
PROVENANCE = {"kind": "test", "steps": 1}


def _trained_tiny(arch: str, seed: int = 0) -> torch.nn.Module:
    """A tiny model after one real optimizer step and BN calibration (non-trivial stats)."""
    torch.manual_seed(seed)
    model = create_model(arch, **TINY[arch], num_classes=10)
    s = TINY[arch]["input_size"]
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    model(torch.randn(8, 3, s, s)).logsumexp(1).mean().backward()
    opt.step()
    clip_latent_weights_(model)
    calibrate_bn(model, torch.randn(32, 3, s, s))
    return model.eval()


@pytest.mark.parametrize("arch", ["birealnet_112", "binary_alexnet"])
def test_reload_reproduces_sign_bits_exactly_and_features(arch: str, tmp_path: Path) -> None:
    model = _trained_tiny(arch)
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path, PROVENANCE)
    loaded = load_checkpoint(path)
    s = TINY[arch]["input_size"]
    x = torch.randn(16, 3, s, s)
    with torch.no_grad():
        ref = model.forward_features(x)
    floats, bits = loaded.extract(x)
    assert np.array_equal(bits, pack_signs(ref))
    np.testing.assert_allclose(floats, ref.numpy(), rtol=1e-5, atol=1e-5)
    assert sum(isinstance(m, FoldedBinaryLayer) for m in loaded.model.modules()) > 0
    assert not any(isinstance(m, BinaryUnitBN) for m in loaded.model.modules())
    if arch == "birealnet_112":  # the real stem/downsample convs carry their batch norm now
        convs = [m for m in loaded.model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(c.bias is not None for c in convs)


def test_binary_weights_are_stored_at_one_bit_each(tmp_path: Path) -> None:
    model = _trained_tiny("birealnet_112")
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path, PROVENANCE)
    units = {n: u for n, u in model.named_modules() if isinstance(u, BinaryUnitBN)}
    units = {n: u for n, u in units.items() if not n.startswith("head")}
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        for name, unit in units.items():
            bits = f.get_tensor(f"{name}.weight_bits")
            assert bits.dtype == torch.uint8
            assert bits.numel() == packed_width(unit.op.weight.numel())
            assert f"{name}.op.weight" not in keys and f"{name}.bn.running_var" not in keys
        assert not any(k.startswith("head.") for k in keys)
    n_binary = sum(u.op.weight.numel() for u in units.values())
    info = load_checkpoint(path).info()
    assert info["binary_parameters"] == n_binary
    assert info["parameters"] == info["binary_parameters"] + info["real_parameters"]
    assert info["float32_bytes"] == 4 * info["parameters"]
    assert info["bits_per_weight"] == pytest.approx(
        8 * path.stat().st_size / info["parameters"], abs=1e-3
    )


def test_id_is_sha256_of_file_and_stable_across_saves(tmp_path: Path) -> None:
    model = _trained_tiny("birealnet_112")
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    ida, idb = save_checkpoint(model, a, PROVENANCE), save_checkpoint(model, b, PROVENANCE)
    assert ida == idb == hashlib.sha256(a.read_bytes()).hexdigest()
    assert load_checkpoint(a).id == ida
    other = save_checkpoint(model, b, {"kind": "test", "steps": 2})
    assert other != ida


def test_restamp_changes_only_the_preprocessing_and_records_it(tmp_path: Path) -> None:
    model = _trained_tiny("birealnet_112")
    old_cfg = {**model.pretrained_cfg, "resize": 36, "crop_pct": 0.875}  # an earlier default
    model.pretrained_cfg = old_cfg
    src, out = tmp_path / "old.safetensors", tmp_path / "new.safetensors"
    old_id = save_checkpoint(model, src, PROVENANCE)
    new_id = restamp_preprocessing(src, out, note="why")
    old, new = load_checkpoint(src), load_checkpoint(out)
    assert new.id == new_id != old_id
    assert old.pretrained_cfg == old_cfg
    declared = create_model("birealnet_112", **TINY["birealnet_112"]).pretrained_cfg
    assert new.pretrained_cfg == declared
    [change] = new.metadata["provenance"]["changes"]
    assert change["from"] == old_cfg and change["to"] == new.pretrained_cfg
    assert change["parent"] == old_id and change["note"] == "why"
    assert new.metadata["provenance"]["kind"] == "test"
    with safe_open(src, "pt") as a, safe_open(out, "pt") as b:  # the weights, byte for byte
        names = a.keys()
        assert set(names) == set(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in names)
    with pytest.raises(CheckpointError, match="already"):
        restamp_preprocessing(out, tmp_path / "again.safetensors", note="")
    # `headhub extractor restamp` writes the same file; a current checkpoint is an error line
    cli_out = tmp_path / "cli.safetensors"
    result = CliRunner().invoke(app, ["restamp", str(src), "--out", str(cli_out), "--note", "why"])
    assert result.exit_code == 0 and f"id {new_id}" in result.output
    assert cli_out.read_bytes() == out.read_bytes()
    again = ["restamp", str(out), "--out", str(tmp_path / "x"), "--note", ""]
    result = CliRunner().invoke(app, again)
    assert result.exit_code == 1 and "already" in result.output


def test_repool_keeps_the_network_and_refits_only_the_feature_norm(tmp_path: Path) -> None:
    from extractor.kernels.network import build_fast_model

    model = _trained_tiny("birealnet_112")
    src, out = tmp_path / "avg.safetensors", tmp_path / "avgmax.safetensors"
    old_id = save_checkpoint(model, src, PROVENANCE)
    calibration = torch.randn(300, 3, 32, 32)  # > one 256-image chunk
    new_id = repool(src, out, calibration, note="why", pool="avgmax")
    old, new = load_checkpoint(src), load_checkpoint(out)
    assert new.id == new_id != old_id
    assert (old.feature_dim, new.feature_dim) == (24, 48) and new.info()["feature_dim"] == 48
    assert new.metadata["config"]["pool"] == "avgmax"
    [change] = new.metadata["provenance"]["changes"]
    assert change["from"] == {"pool": "avg"} and change["to"] == {"pool": "avgmax"}
    assert change["parent"] == old_id and change["note"] == "why"
    assert change["feature_norm"] == "refitted on 300 calibration images"
    with safe_open(src, "pt") as a, safe_open(out, "pt") as b:
        names = a.keys()
        changed = {k for k in names if not torch.equal(a.get_tensor(k), b.get_tensor(k))}
    assert changed == {"feature_norm.running_mean", "feature_norm.running_var"}

    x = torch.randn(5, 3, 32, 32)
    with torch.inference_mode():
        f_old, f_new = old.model.forward_features(x), new.model.forward_features(x)
        assert torch.equal(build_fast_model(new).forward_features(x), f_new)  # kernels too

        def unnormalised(loaded, f):  # type: ignore[no-untyped-def]
            bn = loaded.model.feature_norm
            return f * torch.sqrt(bn.running_var + bn.eps) + bn.running_mean

        avg, top = unnormalised(new, f_new).split(24, dim=1)
        torch.testing.assert_close(avg, unnormalised(old, f_old), rtol=1e-4, atol=1e-4)
        assert (top >= avg - 1e-5).all()  # a channel's maximum is at least its mean
        centred = new.model.forward_features(calibration)
    assert centred.mean(0).abs().max() < 1e-3  # refitted on the calibration images

    with pytest.raises(CheckpointError, match="already"):
        repool(out, tmp_path / "again.safetensors", calibration, note="", pool="avgmax")
    with pytest.raises(CheckpointError, match="cannot pool"):
        repool(src, tmp_path / "bad.safetensors", calibration, note="", pool="median")
    # The command refuses an unknown pooling before it builds the calibration corpus.
    args = ["repool", str(src), "--pool", "median", "--out", str(tmp_path / "c"), "--note", "x"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "one of avg, avgmax" in result.output


def test_loaded_model_is_frozen_in_eval_and_has_no_head_unless_saved(tmp_path: Path) -> None:
    model = _trained_tiny("birealnet_112")
    save_checkpoint(model, tmp_path / "a.safetensors", PROVENANCE)
    loaded = load_checkpoint(tmp_path / "a.safetensors")
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    with pytest.raises(CheckpointError):
        loaded.model.forward_head(torch.zeros(1, 24))
    save_checkpoint(model, tmp_path / "h.safetensors", PROVENANCE, include_head=True)
    with_head = load_checkpoint(tmp_path / "h.safetensors")
    f = torch.randn(2, 24)
    with torch.no_grad():
        assert torch.allclose(with_head.model.forward_head(f), model.forward_head(f))


def test_save_refuses_a_model_that_is_not_fully_binary(tmp_path: Path) -> None:
    model = create_model("birealnet_112", **TINY["birealnet_112"])
    set_binarize(model, activations=True, weights=False)
    with pytest.raises(CheckpointError):
        save_checkpoint(model, tmp_path / "x.safetensors", PROVENANCE)
    set_binarize(model, activations=True, weights=True)
    with pytest.raises(CheckpointError):
        save_checkpoint(model, tmp_path / "x.safetensors", {})


def test_load_rejects_garbage_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_random_init_command_writes_a_labelled_deterministic_stand_in(tmp_path: Path) -> None:
    from extractor.calibration import write_random_init

    out = tmp_path / "random.safetensors"
    result = CliRunner().invoke(app, ["random-init", "--out", str(out), "--seed", "3"])
    assert result.exit_code == 0, result.output
    loaded = load_checkpoint(out)
    assert f"id {loaded.id}" in result.output and loaded.arch == DEFAULT_ARCH
    prov = loaded.metadata["provenance"]
    assert prov["kind"] == "random-init" and "STAND-IN" in prov["note"] and prov["seed"] == 3
    assert write_random_init(tmp_path / "again.safetensors", seed=3) == loaded.id


def test_default_checkpoint_is_a_labelled_small_checkpoint_of_the_default_arch() -> None:
    loaded = load_checkpoint(DEFAULT_CHECKPOINT)
    assert loaded.arch == DEFAULT_ARCH
    prov = loaded.metadata["provenance"]
    if prov["kind"] == "random-init":
        assert "STAND-IN" in prov["note"]
    else:  # the distilled default (docs/distillation.md) names its teacher and training
        assert prov["kind"] == "distilled"
        assert prov["teacher"] and prov["steps"] > 0 and prov["date"]
    assert DEFAULT_CHECKPOINT.stat().st_size < 2_000_000
    info = loaded.info()
    assert info["feature_dim"] == loaded.model.config.feature_dim  # 512 per pooling and grid cell
    assert info["input_size"] == [3, 112, 112]
    assert info["float32_bytes"] > 15 * info["size_bytes"]
    x = torch.randn(4, 3, 112, 112)
    floats, bits = loaded.extract(x)
    assert np.isfinite(floats).all()
    assert len({row.tobytes() for row in bits}) == 4  # distinct inputs, distinct sign patterns


def test_inspect_prints_id_architecture_and_sizes(tmp_path: Path) -> None:
    model = _trained_tiny("birealnet_112")
    path = tmp_path / "m.safetensors"
    ident = save_checkpoint(model, path, PROVENANCE)
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    for text in (ident, "birealnet_112", "bits per parameter", "float32 size"):
        assert text in result.output
    missing = CliRunner().invoke(app, ["inspect", str(tmp_path / "nope.safetensors")])
    assert missing.exit_code == 1
