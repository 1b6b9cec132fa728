"""`headhub extractor ...`: every command of the extractor (mounted by service/commands/cli.py).

serve; checkpoints: inspect, restamp, repool, random-init; distillation: targets, train, report.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from extractor.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, load_checkpoint

app = typer.Typer(no_args_is_help=True, help="The shared binary feature extractor.")


@contextmanager
def _exit_on(*errors: type[Exception]) -> Iterator[None]:
    """An expected error becomes one line on stderr and exit status 1, not a traceback."""
    try:
        yield
    except errors as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc


def _mb(n: int) -> str:
    return f"{n:,} B ({n / 1e6:.2f} MB)"


@app.command()
def inspect(
    path: Path = typer.Argument(DEFAULT_CHECKPOINT, help="checkpoint (.safetensors)"),
) -> None:
    """Print a checkpoint's id, architecture, parameter counts and packed vs float32 size."""
    with _exit_on(CheckpointError):
        ext = load_checkpoint(path)
    info = ext.info()
    prov = ext.metadata.get("provenance", {})
    rows = [
        ("path", str(path)),
        ("id", info["id"]),
        ("architecture", info["architecture"]),
        ("input_size", "x".join(str(d) for d in info["input_size"])),
        ("feature_dim", str(info["feature_dim"])),
        ("parameters", f"{info['parameters']:,}"),
        ("  binary (1 bit)", f"{info['binary_parameters']:,}"),
        ("  real (float32)", f"{info['real_parameters']:,}"),
        ("size", _mb(info["size_bytes"])),
        ("bits per parameter", f"{info['bits_per_weight']:.3f}"),
        ("float32 size", _mb(info["float32_bytes"])),
        ("compression", f"{info['float32_bytes'] / info['size_bytes']:.1f}x"),
        ("provenance", ", ".join(f"{k}={v}" for k, v in prov.items())),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value}")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="interface to listen on"),
    port: int = typer.Option(8001, help="TCP port"),
    checkpoint: Path | None = typer.Option(
        None,
        envvar="HEADHUB_EXTRACTOR_CHECKPOINT",
        help="checkpoint to serve (default: the one shipped in the repo)",
    ),
    reference: bool = typer.Option(
        False, "--reference", help="serve the float PyTorch reference path, not fast kernels"
    ),
    max_batch: int = typer.Option(32, help="largest dynamic batch"),
    max_wait_ms: float = typer.Option(
        5.0, help="longest wait for images on their way to join a batch"
    ),
    fill_batches: bool = typer.Option(
        False,
        "--fill-batches",
        help="wait --max-wait-ms for a batch to fill even when no more images are on their way "
        "(larger batches from many single-image clients, at the cost of latency)",
    ),
    queue_size: int = typer.Option(256, help="queued images before answering 503"),
    threads: int | None = typer.Option(
        None, help="torch intra-op threads (default: torch's, one per physical core)"
    ),
    checkpoint_dir: Path | None = typer.Option(
        None,
        envvar="HEADHUB_EXTRACTOR_DIR",
        help="more checkpoints, each named <id>.safetensors, served beside the default "
        "(`headhub up` passes extractors/ under its data directory)",
    ),
    uds: Path | None = typer.Option(
        None,
        help="also serve on this Unix socket (clients on the same host: unix:PATH in "
        "HEADHUB_EXTRACTOR_URLS; `headhub up` does this)",
    ),
) -> None:
    """Serve features over HTTP: load the networks once, frozen, and batch requests dynamically.

    The default checkpoint answers `/v1/info` and unqualified feature requests; every checkpoint
    of the directory is served too (`POST /v1/features?extractor=<id>`), each with its own
    micro-batcher, and one copied in later is loaded on its first request.
    """
    import torch
    import uvicorn

    from extractor.inference import keep_freed_memory
    from extractor.server import create_app
    from extractor.web.logs import configure_logging

    configure_logging("extractor", fmt="json")
    keep_freed_memory()  # no page faults on every batch's activations
    # One inference thread; parallelism is intra-op. Raises if torch already ran parallel work.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    with _exit_on(CheckpointError):
        app_ = create_app(
            checkpoint or DEFAULT_CHECKPOINT,
            reference=reference,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            fill_batches=fill_batches,
            queue_size=queue_size,
            threads=threads,
            checkpoint_dir=checkpoint_dir,
        )
    # log_config=None: uvicorn's loggers write through the JSON handler like every other logger
    config = uvicorn.Config(app_, host=host, port=port, log_config=None, access_log=False)
    sockets = [config.bind_socket()]
    if uds is not None:
        sockets.append(_unix_socket(uds))
    try:
        uvicorn.Server(config).run(sockets=sockets)
    finally:
        if uds is not None:
            with contextlib.suppress(OSError):
                uds.unlink()


def _unix_socket(path: Path) -> Any:
    """A listening-ready Unix socket at `path` (a stale file from a killed process is replaced),
    readable and writable by this user only."""
    import os
    import socket

    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    return sock


@app.command()
def install(
    checkpoint: Path = typer.Argument(..., help="checkpoint (.safetensors) to serve"),
    directory: Path | None = typer.Option(
        None,
        "--dir",
        envvar="HEADHUB_EXTRACTOR_DIR",
        help="the extractor processes' checkpoint directory (default: extractors/ under "
        "HEADHUB_DATA_DIR)",
    ),
) -> None:
    """Copy a checkpoint into the extractor directory as <id>.safetensors and print its id.

    Every extractor process reading that directory serves it from its next request for the id;
    register it with `headhub extractors register ID`.
    """
    from extractor.catalog import default_checkpoint_dir, install_checkpoint

    target_dir = directory or default_checkpoint_dir()
    with _exit_on(CheckpointError, OSError):
        ident = install_checkpoint(checkpoint, target_dir)
    typer.echo(f"installed {target_dir}/{ident}.safetensors")
    typer.echo(ident)


@app.command()
def targets(
    out: Path = typer.Option(..., "--out", help="store directory (created, or continued)"),
    views: int = typer.Option(48_000, help="fixed views in all, split by corpus weight"),
    teacher_size: int = typer.Option(224, help="teacher input side"),
    store_side: int = typer.Option(160, help="side of the student's copy of each view"),
    procedural: int = typer.Option(6000, help="procedural images in the corpus"),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    threads: int = typer.Option(2, help="torch threads"),
    seed: int = typer.Option(0),
    map_grid: int = typer.Option(
        0,
        min=0,
        help="also store the teacher's intermediate maps pooled to this grid "
        "(for `train --map-weight`); 0 stores none",
    ),
) -> None:
    """Run the teacher once over fixed corpus views and store its outputs for `train --targets`.

    Stops safely at any point; the same command continues where it left off.
    """
    from extractor.distill.corpus import CorpusConfig
    from extractor.distill.targets import TargetConfig, build_targets

    cfg = TargetConfig(
        views=views, teacher_size=teacher_size, store_side=store_side, seed=seed,
        threads=threads, corpus=CorpusConfig(side=teacher_size, procedural_train=procedural),
        map_grid=map_grid,
    )  # fmt: skip
    with _exit_on(ValueError):
        store = build_targets(cfg, out, device=device, echo=typer.echo)
    typer.echo(f"target store {out}: {len(store)} views, complete={store.complete}")


@app.command()
def train(
    out: Path | None = typer.Option(
        None, "--out", help="run directory (state.pt, train.log, metrics.jsonl)"
    ),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out exactly"),
    export: Path | None = typer.Option(
        None, "--export", help="only pack the run in this directory into --checkpoint, then exit"
    ),
    checkpoint: Path | None = typer.Option(
        None, help="where the packed extractor goes (default: OUT/extractor.safetensors)"
    ),
    device: str = typer.Option("cpu", help="cpu or cuda"),
    minutes: float | None = typer.Option(
        None, help="training-time budget; the LR schedule follows the clock"
    ),
    steps: int | None = typer.Option(None, help="fixed number of steps (overrides --minutes)"),
    batch: int = typer.Option(128, help="images per step"),
    lr: float = typer.Option(1e-3, help="peak Adam learning rate (warm-up, then cosine)"),
    stage1_frac: float = typer.Option(0.3, help="share of the schedule in stage 1"),
    stage1_real: str = typer.Option(
        "weights", help="stage 1 keeps these real: weights|activations|none"
    ),
    teacher_size: int = typer.Option(128, help="teacher input side (same crop as the student)"),
    procedural: int = typer.Option(6000, help="procedural images in the corpus"),
    threads: int = typer.Option(2, help="torch threads"),
    ckpt_minutes: float = typer.Option(5.0, help="minutes between checkpoints"),
    eval_minutes: float = typer.Option(10.0, help="minutes between held-out evaluations"),
    seed: int = typer.Option(0),
    init: Path | None = typer.Option(
        None,
        metavar="CHECKPOINT",
        help="warm start from this packed extractor (e.g. the default): a longer schedule in "
        "a second run; stage 1 is skipped (the net is binary already)",
    ),
    feature_grid: int | None = typer.Option(
        None,
        min=1,
        help="export features pooled to a g x g grid (default: the architecture's)",
    ),
    pool: str | None = typer.Option(
        None, help="export features pooled avg or avgmax (default: the architecture's)"
    ),
    targets: Path | None = typer.Option(
        None,
        metavar="STORE",
        help="train on a target store (`headhub extractor targets`): fixed views with the "
        "teacher's outputs precomputed; its corpus and teacher size replace the options here",
    ),
    cos_weight: float = typer.Option(2.0, help="weight of the feature-cosine loss"),
    map_weight: float = typer.Option(
        0.0, help="weight of the loss on the first stages' maps against the teacher's (0: off)"
    ),
    map_grid: int = typer.Option(
        4, min=1, help="grid the stage maps are pooled to, online (a store has its own)"
    ),
    input_size: int | None = typer.Option(
        None,
        min=32,
        help="the student's input side (default: the architecture's, 112); a target store's "
        "views are resized to it, so at most the store's side is useful",
    ),
    mix: float = typer.Option(
        0.8, help="share of online batches mixed (half mixup, half cutmix); 0 turns it off"
    ),
    continue_from: Path | None = typer.Option(
        None,
        metavar="LATENT",
        help="continue a run from its committed latent file (*.latent.safetensors) in a new "
        "--out; --minutes/--steps, --targets and --map-weight, when given, replace its own",
    ),
) -> None:
    """Distil the EfficientNet-Lite0 teacher into the default binary extractor."""
    from extractor.distill.corpus import CorpusConfig
    from extractor.distill.train import DistillError, TrainConfig, Trainer, command_line

    with _exit_on(DistillError, CheckpointError):
        if export is not None:
            trainer = Trainer.resume(export, device="cpu", threads=threads)
            target = checkpoint or export / "extractor.safetensors"
            typer.echo(f"exported {target}: id {trainer.export(target, feature_grid, pool)}")
            return
        if out is None:
            raise DistillError("--out RUN_DIR is required (or --export RUN_DIR)")
        if resume:
            trainer = Trainer.resume(out, device=device, threads=threads)
        elif continue_from is not None:
            budget: dict[str, float | None] = {}
            if steps:
                budget = {"steps": steps, "minutes": None}
            elif minutes:
                budget = {"minutes": minutes}
            # a continuation may add the hint loss, from a store of the same views with maps
            extra: dict[str, Any] = {"map_weight": map_weight} if map_weight else {}
            if targets is not None:
                extra["targets"] = str(targets)
            trainer = Trainer.from_latent(
                continue_from, out, device=device, threads=threads, **budget, **extra
            )
        else:
            if (out / "state.pt").exists():
                raise DistillError(f"{out} already holds a run: pass --resume or another --out")
            cfg = TrainConfig(
                out=out, steps=steps, minutes=None if steps else minutes, batch=batch, lr=lr,
                stage1_frac=stage1_frac, stage1_real="none" if init else stage1_real,
                teacher_size=teacher_size, init=None if init is None else str(init),
                device=device, threads=threads, ckpt_minutes=ckpt_minutes,
                eval_minutes=eval_minutes, seed=seed, command=command_line(),
                corpus=CorpusConfig(procedural_train=procedural, seed=seed),
                targets=None if targets is None else str(targets), cos_weight=cos_weight,
                map_weight=map_weight, map_grid=map_grid,
                arch_overrides={} if input_size is None else {"input_size": input_size},
                p_mixup=mix / 2, p_cutmix=mix / 2,
            )  # fmt: skip
            trainer = Trainer(cfg)
        trainer.run()
        target = checkpoint or out / "extractor.safetensors"
        typer.echo(f"exported {target}: id {trainer.export(target, feature_grid, pool)}")


@app.command()
def repool(
    checkpoint: Path = typer.Argument(..., help="trained checkpoint (.safetensors)"),
    out: Path = typer.Option(..., help="where the re-pooled checkpoint goes"),
    pool: str | None = typer.Option(None, help="avg or avgmax"),
    feature_grid: int | None = typer.Option(None, min=1, help="pool to a g x g grid"),
    note: str = typer.Option(..., help="why (kept in the provenance's changes)"),
) -> None:
    """Serve a trained network's features pooled another way (its weights stay as they are).

    The feature-centring batch norm is refitted on views of the distillation corpus's training
    images (never the transfer benchmark's test images).
    """
    from extractor.conversions import repool as repool_checkpoint
    from extractor.distill.corpus import CorpusConfig, build_corpus
    from extractor.distill.train import calibration_views
    from extractor.models.birealnet import POOLS

    if pool is not None and pool not in POOLS:  # before minutes of corpus building
        raise typer.BadParameter(f"one of {', '.join(POOLS)}", param_hint="--pool")
    with _exit_on(CheckpointError):
        pretrained_cfg = load_checkpoint(checkpoint).pretrained_cfg
        views = calibration_views(build_corpus(CorpusConfig()), pretrained_cfg)
        ident = repool_checkpoint(
            checkpoint, out, views, note, pool=pool, feature_grid=feature_grid
        )
    typer.echo(f"wrote {out}: id {ident}")


@app.command()
def restamp(
    checkpoint: Path = typer.Argument(..., help="checkpoint (.safetensors)"),
    out: Path = typer.Option(..., help="where the restamped checkpoint goes (may be CHECKPOINT)"),
    note: str = typer.Option(..., help="why (kept in the provenance's changes)"),
) -> None:
    """Give a checkpoint the preprocessing its architecture's code now declares.

    The weights stay byte for byte; the old preprocessing, the parent id and the note go into the
    provenance's changes.
    """
    from extractor.conversions import restamp_preprocessing

    with _exit_on(CheckpointError, OSError):
        ident = restamp_preprocessing(checkpoint, out, note)
    typer.echo(f"wrote {out}: id {ident}")


@app.command()
def random_init(
    out: Path = typer.Option(..., help="where the checkpoint goes"),
    seed: int = typer.Option(0, help="seed of the weights and of the calibration images"),
) -> None:
    """Write an untrained stand-in extractor: seeded weights, BN calibrated on procedural images.

    Deterministic: the same code and seed give the same id.
    """
    from extractor.calibration import write_random_init

    typer.echo(f"wrote {out}: id {write_random_init(out, seed)}")


@app.command()
def report(
    run: Path = typer.Argument(..., help="distillation run directory (holds metrics.jsonl)"),
) -> None:
    """Print a distillation run's training and evaluation curves as Markdown tables."""
    from extractor.distill.report import curves_markdown, load_metrics

    with _exit_on(OSError):
        records = load_metrics(run)
    typer.echo(curves_markdown(records))
