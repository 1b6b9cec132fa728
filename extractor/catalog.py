"""The extractors one process serves: its default checkpoint plus a directory of `<id>.safetensors`.

Each network has its own inference path and its own micro-batcher (one inference thread each), so
a burst on one extractor never waits behind another's batches, and every replica serves the same
set: the API's failover between replicas is unchanged (docs/architecture.md, "Several
extractors"). Files in the directory are loaded at start; a file copied in later is loaded on the
first request for its id, without a restart. A file whose name is not the SHA-256 of its bytes is
never served: it is listed in `refused`, so registering that id fails loudly instead of pinning
heads to a network nobody can reproduce.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from extractor.batcher import MicroBatcher
from extractor.checkpoint import (
    CheckpointError,
    LoadedExtractor,
    checkpoint_id,
    load_checkpoint,
    read_metadata,
)
from extractor.inference import InferencePath, select_path

__all__ = [
    "ID_PATTERN",
    "Catalog",
    "NotServed",
    "Served",
    "checkpoint_file_name",
    "default_checkpoint_dir",
    "describe_checkpoint",
    "install_checkpoint",
]

log = logging.getLogger("extractor.catalog")

ID_PATTERN = re.compile(r"[0-9a-f]{64}")
SUFFIX = ".safetensors"


def checkpoint_file_name(extractor_id: str) -> str:
    """The name a checkpoint has in the extractor directory: its id (SHA-256 hex) + .safetensors."""
    return f"{extractor_id}{SUFFIX}"


def default_checkpoint_dir() -> Path:
    """`HEADHUB_EXTRACTOR_DIR`, else `extractors/` under `HEADHUB_DATA_DIR` (default .headhub):
    the same place `service.settings.Settings.extractor_dir` names, without importing it."""
    explicit = os.environ.get("HEADHUB_EXTRACTOR_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("HEADHUB_DATA_DIR") or ".headhub") / "extractors"


def describe_checkpoint(data: bytes) -> dict[str, Any]:
    """The `/v1/info` fields of a checkpoint file's bytes, read from its metadata alone (no
    network is built): what the service's registry stores about an extractor."""
    meta = read_metadata(data)
    counts = meta["parameters"]
    n = int(counts["binary"]) + int(counts["real"])
    return {
        "id": checkpoint_id(data),
        "architecture": meta["arch"],
        "input_size": list(meta["pretrained_cfg"]["input_size"]),
        "feature_dim": int(meta["feature_dim"]),
        "parameters": n,
        "size_bytes": len(data),
        "bits_per_weight": round(8 * len(data) / n, 3),
        "preprocessing": meta["pretrained_cfg"],
        "provenance": meta.get("provenance") or {},
    }


def install_checkpoint(source: Path, directory: Path) -> str:
    """Copy a checkpoint into `directory` under its id (atomically) and return the id.

    The format is checked first, so a file that is not a packed checkpoint never lands there.
    """
    data = Path(source).read_bytes()
    read_metadata(data)  # raises CheckpointError on anything but a headhub checkpoint
    ident = checkpoint_id(data)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / checkpoint_file_name(ident)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return ident


class NotServed(LookupError):
    """No network with this id here; `mismatch` when a file claims the id but hashes otherwise."""

    def __init__(self, extractor_id: str, reason: str, *, mismatch: bool = False) -> None:
        super().__init__(reason)
        self.extractor_id, self.reason, self.mismatch = extractor_id, reason, mismatch


@dataclass
class Served:
    """One loaded network, the code that runs it and its batcher."""

    loaded: LoadedExtractor
    path: InferencePath
    batcher: MicroBatcher
    info: dict[str, Any]  # the /v1/info document of this network

    @property
    def id(self) -> str:
        return self.loaded.id

    def warm_up(self) -> None:
        with torch.inference_mode():
            self.path.forward(torch.zeros(1, *self.loaded.pretrained_cfg["input_size"]))


class Catalog:
    """Every network of the process by id; thread-safe, loads directory files on demand."""

    def __init__(
        self,
        default: LoadedExtractor,
        directory: Path | None,
        *,
        reference: bool,
        make_batcher: Callable[[Callable[[torch.Tensor], torch.Tensor]], MicroBatcher],
        extra_info: dict[str, Any] | None = None,
    ) -> None:
        self.directory = directory
        self.reference = reference
        self._make_batcher = make_batcher
        self._extra_info = extra_info or {}
        self._lock = threading.Lock()
        self._served: dict[str, Served] = {}
        self.refused: dict[str, str] = {}  # file name -> why it is not served
        self._started = False
        self.default = self._add(default)

    def _add(self, loaded: LoadedExtractor) -> Served:
        loaded.model.eval().requires_grad_(False)
        path = select_path(loaded, reference=self.reference)
        info = loaded.info() | {
            "path": path.name,
            **path.details,
            "preprocessing": loaded.pretrained_cfg,
            "provenance": loaded.metadata.get("provenance"),
            **self._extra_info,
        }
        served = Served(loaded, path, self._make_batcher(path.forward), info)
        self._served[loaded.id] = served
        return served

    # -- the directory ----------------------------------------------------------------------
    def _load_file(self, file: Path) -> Served | None:
        """Load one `<id>.safetensors` (caller holds the lock); None, with a reason, if refused."""
        stem = file.name[: -len(SUFFIX)]
        if not ID_PATTERN.fullmatch(stem):
            self.refused[file.name] = "the name is not <SHA-256 of the file>.safetensors"
            return None
        try:
            data = file.read_bytes()
        except OSError as exc:
            self.refused[file.name] = f"unreadable: {exc}"
            return None
        actual = checkpoint_id(data)
        if actual != stem:
            self.refused[file.name] = f"the file's SHA-256 is {actual}, not its name"
            return None
        try:
            loaded = load_checkpoint(file)
        except CheckpointError as exc:
            self.refused[file.name] = str(exc)
            return None
        served = self._add(loaded)
        self.refused.pop(file.name, None)
        log.info("loaded extractor", extra={"fields": {"extractor_id": stem, "file": str(file)}})
        return served

    def load_directory(self) -> None:
        """Load every checkpoint file of the directory not loaded yet (at start)."""
        if self.directory is None or not self.directory.is_dir():
            return
        with self._lock:
            for file in sorted(self.directory.glob(f"*{SUFFIX}")):
                stem = file.name[: -len(SUFFIX)]
                if stem not in self._served:
                    self._load_file(file)

    def loaded(self, extractor_id: str | None) -> Served | None:
        """The network if it is already loaded (no file system access): the request path's
        check, so only a first request for a newly copied file goes to a worker thread."""
        return self.default if extractor_id is None else self._served.get(extractor_id)

    def get(self, extractor_id: str | None) -> Served:
        """The network with this id (None: the default), loading its file if it appeared since."""
        if extractor_id is None:
            return self.default
        found = self._served.get(extractor_id)
        if found is not None:
            return found
        if not ID_PATTERN.fullmatch(extractor_id):
            raise NotServed(extractor_id, f"'{extractor_id[:80]}' is not an extractor id")
        with self._lock:
            found = self._served.get(extractor_id)
            if found is not None:
                return found
            file = (
                None
                if self.directory is None
                else self.directory / checkpoint_file_name(extractor_id)
            )
            if file is None or not file.is_file():
                raise NotServed(extractor_id, f"extractor {extractor_id} is not served here")
            served = self._load_file(file)
            if served is None:
                reason = self.refused.get(file.name, "refused")
                raise NotServed(extractor_id, f"{file.name}: {reason}", mismatch=True)
            if self._started:
                served.warm_up()
                served.batcher.start()
            return served

    def all(self) -> list[Served]:
        """Default first, then the others by id."""
        others = sorted((s for i, s in self._served.items() if i != self.default.id), key=_id)
        return [self.default, *others]

    def checkpoint_bytes(self, extractor_id: str) -> bytes:
        """The file of a served network, re-read and re-hashed (it may have changed on disk)."""
        served = self.get(extractor_id)
        data = served.loaded.path.read_bytes()
        if checkpoint_id(data) != served.id:
            raise NotServed(
                extractor_id,
                f"{served.loaded.path} changed on disk since it was loaded",
                mismatch=True,
            )
        return data

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Warm up and start every batcher (in the lifespan, off the event loop)."""
        with self._lock:
            for served in self.all():
                served.warm_up()
                served.batcher.start()
            self._started = True

    def stop(self) -> None:
        for served in self.all():
            served.batcher.stop()

    @property
    def running(self) -> bool:
        return all(s.batcher.running for s in self.all())


def _id(served: Served) -> str:
    return served.id
