"""Do earlier stages of a binary extractor transfer better than its served features?

    python -m bench.transfer.stages [--checkpoint CKPT]

The float head (the service's L-BFGS solver, 3 seeds) on the global average of each stage's
output map, alone and beside the final map, each feature standardised on the training images;
the random-init network of the same architecture as the control. Tasks: `clipart_ood`
(out-of-domain) and `clipart` (in-distribution), as in `python -m bench.transfer`. Results:
docs/distillation.md, "A probe without training". Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bench.transfer.__main__ import head_row
from bench.transfer.datasets import clipart_ood_task, clipart_task
from bench.transfer.features import batches
from extractor.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from extractor.models import create_model
from extractor.packing import pack_signs

READOUTS = {
    "final (served)": ("final",),
    "stage 3": ("s3",),
    "stage 2": ("s2",),
    "final + stage 3": ("final", "s3"),
    "final + stages 3, 2": ("final", "s3", "s2"),
}


@torch.inference_mode()
def stage_means(model: torch.nn.Module, images: np.ndarray, cfg: dict) -> dict[str, np.ndarray]:  # type: ignore[type-arg]
    """Globally averaged maps after stages 2 and 3, and the served features (the final map
    averaged and centred per feature, which the readout's standardisation undoes)."""
    out: dict[str, list[torch.Tensor]] = {"s2": [], "s3": [], "final": []}
    for x in batches(images, cfg):
        features, maps = model.forward_maps(x)  # type: ignore[operator]
        out["s2"].append(maps[1].mean((2, 3)))
        out["s3"].append(maps[2].mean((2, 3)))
        out["final"].append(features)
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.transfer.stages", description=__doc__)
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    loaded = load_checkpoint(args.checkpoint)
    torch.manual_seed(0)
    random_net = create_model(loaded.arch, **loaded.metadata["config"]).eval()
    for task in (clipart_ood_task(), clipart_task()):
        print(task.describe())
        for name, model in (("trained", loaded.model), ("random init", random_net)):
            train = stage_means(model, task.x_train, loaded.pretrained_cfg)
            test = stage_means(model, task.x_test, loaded.pretrained_cfg)
            for readout, keys in READOUTS.items():
                a = np.concatenate([train[k] for k in keys], axis=1)
                b = np.concatenate([test[k] for k in keys], axis=1)
                mean, std = a.mean(0), a.std(0) + 1e-6
                a, b = ((a - mean) / std).astype(np.float32), ((b - mean) / std).astype(np.float32)
                row = head_row("float", task, (a, pack_signs(a)), (b, pack_signs(b)), [0, 1, 2])
                print(
                    f"  {name:11s} {readout:20s} {a.shape[1]:4d} features: top-1 "
                    f"{100 * row['top1']:.1f}% +- {100 * row['top1_std']:.1f}"
                )


if __name__ == "__main__":
    main()
