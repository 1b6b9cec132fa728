"""Architecture registry and the forward_features/forward_head contract."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from extractor.layers import BinaryConvBN, BinaryUnitBN, set_binarize
from extractor.models import DEFAULT_ARCH, UnknownModelError, create_model, list_models
from extractor.quantizers import sign

TINY_BIREAL = {"widths": (8, 16, 16, 24), "stem_width": 8, "input_size": 32, "num_classes": 10}
TINY_ALEX = {"conv_widths": (8, 8, 8, 8, 8), "fc_width": 24, "input_size": 96, "num_classes": 10}


def test_registry_lists_default_and_paper_architectures() -> None:
    assert DEFAULT_ARCH == "birealnet_112"
    assert {"birealnet_112", "binary_alexnet"} <= set(list_models())


def test_unknown_architecture_raises_typed_error() -> None:
    with pytest.raises(UnknownModelError):
        create_model("resnet_9000")


def test_default_birealnet_has_the_designed_size() -> None:
    model = create_model(DEFAULT_ARCH)
    binary = sum(u.op.weight.numel() for u in model.modules() if isinstance(u, BinaryUnitBN))
    real = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head"))
    assert binary == 6_266_880
    assert real - binary == 184_256
    assert model.feature_dim == 512
    assert model.pretrained_cfg["input_size"] == [3, 112, 112]
    assert model.pretrained_cfg["resize"] == 112  # the whole image, no centre crop


@pytest.mark.parametrize(
    ("arch", "cfg"),
    [
        ("birealnet_112", TINY_BIREAL),
        ("birealnet_112", {**TINY_BIREAL, "feature_grid": 2}),
        ("birealnet_112", {**TINY_BIREAL, "pool": "avgmax"}),
        ("birealnet_112", {**TINY_BIREAL, "feature_grid": 2, "pool": "avgmax"}),
        ("binary_alexnet", TINY_ALEX),
    ],
)
def test_forward_is_head_of_features_with_contract_shapes(arch: str, cfg: dict) -> None:
    torch.manual_seed(0)
    model = create_model(arch, **cfg).eval()
    s = cfg["input_size"]
    x = torch.randn(3, 3, s, s)
    with torch.no_grad():
        f = model.forward_features(x)
        assert f.shape == (3, model.feature_dim)
        if arch == "birealnet_112":  # a g x g grid of every final channel, per pooling
            per_channel = cfg.get("feature_grid", 1) ** 2 * (2 if cfg.get("pool") else 1)
            assert model.feature_dim == per_channel * cfg["widths"][-1]
        assert torch.equal(model(x), model.forward_head(f))
        assert model.forward_head(f).shape == (3, 10)
    assert model.arch == arch
    cfg_keys = {"input_size", "resize", "crop", "mean", "std", "interpolation"}
    assert cfg_keys <= set(model.pretrained_cfg)


def test_alexnet_features_are_fc7_width_and_first_layer_weights_are_a_choice() -> None:
    model = create_model("binary_alexnet", **TINY_ALEX)
    assert model.feature_dim == 24
    assert isinstance(model.features[0], BinaryConvBN)
    assert model.features[0].act is None  # the first layer sees the real image
    assert model.features[1].act is not None
    real_first = create_model("binary_alexnet", **TINY_ALEX, first_layer_binary_weights=False)
    assert isinstance(real_first.features[0][0], torch.nn.Conv2d)
    assert not isinstance(real_first.features[0], BinaryUnitBN)


def test_config_survives_json_round_trip() -> None:
    model = create_model(DEFAULT_ARCH, **TINY_BIREAL)
    cfg = json.loads(json.dumps(dataclasses.asdict(model.config)))
    again = create_model(DEFAULT_ARCH, **cfg)
    assert again.config == model.config
    assert [n for n, _ in again.named_parameters()] == [n for n, _ in model.named_parameters()]


def test_eval_folded_unit_matches_unfolded_batch_norm() -> None:
    torch.manual_seed(0)
    unit = BinaryConvBN(6, 5, 3, 1, 1, threshold=True, scale=True)
    with torch.no_grad():
        unit.bn.running_mean.uniform_(-3, 3)
        unit.bn.running_var.uniform_(0.5, 4)
        unit.bn.weight.uniform_(-2, 2)
        unit.bn.bias.uniform_(-1, 1)
        unit.threshold.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 6, 7, 7)
    unit.eval()
    with torch.no_grad():
        a = sign(x + unit.threshold.bias.view(1, -1, 1, 1))
        ref = unit.bn(unit.op(a))  # BN in eval mode on alpha * conv(sign(x + b), sign(W))
        assert torch.allclose(unit(x), ref, atol=1e-5)


def test_channels_last_gives_the_same_features() -> None:
    torch.manual_seed(0)
    model = create_model(DEFAULT_ARCH, **TINY_BIREAL).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        f = model.forward_features(x)
        model_cl = model.to(memory_format=torch.channels_last)
        f_cl = model_cl.forward_features(x.to(memory_format=torch.channels_last))
    assert torch.allclose(f, f_cl, atol=1e-4)


def test_training_step_reaches_latent_weights_and_thresholds_in_both_modes() -> None:
    torch.manual_seed(0)
    model = create_model(DEFAULT_ARCH, **TINY_BIREAL).train()
    x = torch.randn(4, 3, 32, 32)
    for activations in (False, True):
        model.zero_grad()
        set_binarize(model, activations=activations, weights=activations)
        model(x).logsumexp(dim=1).sum().backward()
        unit = model.stages[1][1].unit
        assert unit.op.weight.grad is not None and unit.op.weight.grad.abs().sum() > 0
        assert unit.threshold.bias.grad is not None and unit.threshold.bias.grad.abs().sum() > 0
