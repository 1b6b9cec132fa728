"""`headhub upload DATASET DIR`: folder-per-label images, sent in batches, resumable.

Resuming works on two levels: the server identifies images by SHA-256 and counts a re-sent
image as a duplicate, and the client keeps an append-only manifest of the hashes the server
already holds for this dataset, so a re-run after an interruption does not even re-send them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from service.client.http import ApiClient

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class LocalImage:
    label: str
    path: Path
    name: str  # path relative to the label folder: what the server reports back
    size: int


@dataclass
class UploadReport:
    added: int = 0
    duplicates: int = 0
    skipped: int = 0  # already in the manifest: not sent again
    rejected: list[dict[str, str]] = field(default_factory=list)


def scan(root: Path) -> tuple[list[LocalImage], list[Path]]:
    """(images by label folder, other files ignored). Hidden files and folders are skipped."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    images: list[LocalImage] = []
    ignored: list[Path] = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if label_dir.name.startswith("."):
            continue
        for path in sorted(label_dir.rglob("*")):
            rel = path.relative_to(label_dir)
            if not path.is_file() or any(part.startswith(".") for part in rel.parts):
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(LocalImage(label_dir.name, path, rel.as_posix(), path.stat().st_size))
            else:
                ignored.append(path)
    return images, ignored


def batches(
    images: list[LocalImage], *, max_files: int, max_bytes: int
) -> Iterator[list[LocalImage]]:
    """One label per batch (the API labels a whole request), bounded in files and bytes."""
    batch: list[LocalImage] = []
    size = 0
    for img in images:
        if batch and (
            img.label != batch[0].label or len(batch) >= max_files or size + img.size > max_bytes
        ):
            yield batch
            batch, size = [], 0
        batch.append(img)
        size += img.size
    if batch:
        yield batch


class Manifest:
    """Hashes the server already holds for one dataset, one per line, append-only."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.hashes: set[str] = set()
        if path is not None and path.exists():
            self.hashes = {ln.strip() for ln in path.read_text().splitlines() if ln.strip()}

    def add(self, hashes: list[str]) -> None:
        new = [h for h in hashes if h not in self.hashes]
        self.hashes.update(new)
        if self.path is not None and new:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write("".join(h + "\n" for h in new))


def manifest_path(url: str, dataset_id: str) -> Path:
    base = os.environ.get("HEADHUB_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "headhub"
    )
    server = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    return Path(base) / "uploads" / server / f"{dataset_id}.txt"


def upload(
    api: ApiClient,
    dataset_id: str,
    images: list[LocalImage],
    manifest: Manifest,
    *,
    max_files: int = 32,
    max_bytes: int = 8 * 1024 * 1024,
    on_progress: Callable[[int, int], None] = lambda files, nbytes: None,
) -> UploadReport:
    """Send every image not in the manifest; `on_progress(files, bytes)` after each batch."""
    report = UploadReport()
    for batch in batches(images, max_files=max_files, max_bytes=max_bytes):
        payload = [(img, img.path.read_bytes()) for img in batch]
        digests = {img.name: hashlib.sha256(data).hexdigest() for img, data in payload}
        todo = [(img, data) for img, data in payload if digests[img.name] not in manifest.hashes]
        report.skipped += len(payload) - len(todo)
        if todo:
            body = api.post(
                f"/v1/datasets/{dataset_id}/images",
                data={"label": batch[0].label},
                files=[
                    ("files", (img.name, data, "application/octet-stream")) for img, data in todo
                ],
            )
            report.added += int(body.get("added", 0))
            report.duplicates += int(body.get("duplicates", 0))
            rejected = [
                {
                    "filename": str(r.get("filename")),
                    "reason": str(r.get("reason")),
                    "label": batch[0].label,
                }
                for r in body.get("rejected", [])
            ]
            report.rejected.extend(rejected)
            bad = {r["filename"] for r in rejected}
            manifest.add([digests[img.name] for img, _ in todo if img.name not in bad])
        on_progress(len(batch), sum(img.size for img in batch))
    return report
