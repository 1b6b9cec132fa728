"""Quantizers: forward values, the STE gradient mask, latent weight clipping, mode switches."""

from __future__ import annotations

import torch
from torch import nn

from extractor.layers import (
    BinaryConv2d,
    BinaryLinear,
    SignActivation,
    is_fully_binary,
    set_binarize,
)
from extractor.models import create_model
from extractor.quantizers import (
    SteSign,
    WeightBinarizer,
    binarize_weight,
    clip_latent_weights_,
    sign,
    sign_ste,
)


def test_sign_maps_zero_to_plus_one_and_only_emits_plus_minus_one() -> None:
    x = torch.tensor([-2.0, -1e-9, 0.0, -0.0, 1e-9, 3.0])
    assert sign(x).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]
    assert sign_ste(x).tolist() == sign(x).tolist()


def test_ste_gradient_passes_inside_unit_interval_and_is_cancelled_outside() -> None:
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.0001, 7.0], requires_grad=True)
    upstream = torch.arange(1.0, 9.0)
    (sign_ste(x) * upstream).sum().backward()
    assert x.grad is not None
    mask = torch.tensor([0.0, 1, 1, 1, 1, 1, 0, 0])
    assert torch.equal(x.grad, upstream * mask)


def test_ste_module_matches_function() -> None:
    x = torch.randn(4, 5)
    assert torch.equal(SteSign()(x), sign_ste(x))


def test_binarize_weight_without_scale_is_plain_sign() -> None:
    w = torch.randn(6, 3, 3, 3)
    assert torch.equal(binarize_weight(w), sign(w))
    assert torch.equal(WeightBinarizer()(w), sign(w))


def test_xnor_scale_is_mean_abs_per_output_channel() -> None:
    w = torch.randn(4, 2, 3, 3)
    wb = WeightBinarizer(scale=True)(w)
    alpha = w.abs().mean(dim=(1, 2, 3))
    assert torch.allclose(wb, sign(w) * alpha.view(4, 1, 1, 1))


def test_latent_weight_gradient_uses_ste_mask() -> None:
    w = torch.tensor([[0.3, -1.5, -0.2, 2.0]], requires_grad=True)
    binarize_weight(w).sum().backward()
    assert w.grad is not None
    assert w.grad.tolist() == [[1.0, 0.0, 1.0, 0.0]]


def test_clip_latent_weights_clips_binary_layers_only() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), BinaryConv2d(4, 4, 3), BinaryLinear(4, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0).add_(torch.linspace(-3, 3, p.numel()).view_as(p))
    real_before = model[0].weight.clone()
    assert clip_latent_weights_(model) == 2
    assert model[1].weight.abs().max() == 1.0 and model[2].weight.abs().max() == 1.0
    assert model[1].weight.min() == -1.0
    assert torch.equal(model[0].weight, real_before)


def test_binary_conv_forward_uses_signed_weights() -> None:
    conv = BinaryConv2d(2, 3, 3, padding=1)
    x = torch.randn(1, 2, 5, 5)
    ref = torch.nn.functional.conv2d(x, sign(conv.weight), padding=1)
    assert torch.allclose(conv(x), ref)


def test_sign_activation_switches_to_hardtanh_when_not_binary() -> None:
    act = SignActivation()
    x = torch.tensor([-2.0, -0.5, 0.0, 0.25, 4.0])
    assert act(x).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]
    act.binary = False
    assert act(x).tolist() == [-1.0, -0.5, 0.0, 0.25, 1.0]


def test_set_binarize_toggles_every_binary_layer() -> None:
    model = create_model("birealnet_112", widths=(8, 16), depths=(1, 1), input_size=32)
    assert is_fully_binary(model)
    set_binarize(model, activations=False, weights=False)
    assert not any(m.binary for m in model.modules() if isinstance(m, SignActivation))
    convs = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    assert convs and not any(c.binarize_weights for c in convs)
    x = torch.randn(2, 3, 32, 32)
    conv = convs[0]
    assert torch.equal(conv.quantized_weight(), conv.weight)
    set_binarize(model, activations=True, weights=False)
    assert not is_fully_binary(model)
    set_binarize(model, True, True)
    assert is_fully_binary(model)
    assert torch.equal(conv.quantized_weight(), sign(conv.weight))
    model(x)
