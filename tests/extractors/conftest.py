"""Two real extractors in one real `headhub extractor serve`: the shipped default and a tiny one.

The process serves the shipped checkpoint as its default and a directory of `<id>.safetensors`:
a tiny network built with the project's own `save_checkpoint` (seeded, BN calibrated: useful
features), a degenerate one (its final batch norm zeroed, so every image has the same features:
a head on it is at chance) and a file named after an id it does not have. The API (TestClient,
real ASGI) and an in-process worker talk to that process over HTTP.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from extractor.checkpoint import DEFAULT_CHECKPOINT
from tests.fixtures.extractor import TINY_CONFIG, make_tiny_checkpoint, start_extractor


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_degenerate_checkpoint(path: Path) -> Path:
    """A tiny network whose features are the same for every image (final BN scale 0)."""
    import torch

    from extractor.checkpoint import save_checkpoint
    from extractor.models import DEFAULT_ARCH, create_model

    torch.manual_seed(3)
    model = create_model(DEFAULT_ARCH, **TINY_CONFIG)
    model.eval()
    with torch.no_grad():
        model.final[0].weight.zero_()
        model.final[0].bias.fill_(0.5)
    save_checkpoint(model, path, {"kind": "test", "note": "constant features"})
    return path


@dataclass(frozen=True)
class Served:
    url: str
    default_id: str
    tiny_id: str
    bad_id: str
    misnamed_id: str
    directory: Path


@pytest.fixture(scope="session")
def served_extractors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("extractors")
    directory = root / "dir"
    directory.mkdir()
    tiny = make_tiny_checkpoint(root / "tiny.safetensors", seed=7)
    bad = make_degenerate_checkpoint(root / "bad.safetensors")
    for path in (tiny, bad):
        shutil.copy(path, directory / f"{sha256_file(path)}.safetensors")
    misnamed = "e" * 64
    shutil.copy(tiny, directory / f"{misnamed}.safetensors")
    proc = start_extractor(
        DEFAULT_CHECKPOINT, root, "--checkpoint-dir", str(directory), timeout=120
    )
    try:
        yield Served(
            proc.url,
            sha256_file(DEFAULT_CHECKPOINT),
            sha256_file(tiny),
            sha256_file(bad),
            misnamed,
            directory,
        )
    finally:
        proc.stop()


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def colour_images(per_label: int, seed: int = 0) -> dict[str, list[tuple[str, bytes]]]:
    """Noisy photos of three colours: every extractor tells them apart (but a constant one)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[tuple[str, bytes]]] = {}
    for label, rgb in COLOURS.items():
        files = []
        for i in range(per_label):
            base = np.array(rgb, dtype=np.int16)
            img = base + rng.integers(-40, 40, size=(40, 40, 3))
            buf = io.BytesIO()
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "PNG")
            files.append((f"{label}-{i}.png", buf.getvalue()))
        out[label] = files
    return out
