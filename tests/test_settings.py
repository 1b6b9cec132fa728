"""Settings: the generated pepper is never readable by others, not even while it is written."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from service.settings import Settings


def _modes_of_secret_files(data_dir: Path) -> dict[str, int]:
    return {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in data_dir.iterdir()
        if p.is_file() and p.stat().st_size > 0
    }


def test_the_pepper_file_is_0600_from_its_first_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file holding the secret is 0600 whenever the code touches it (chmod after writing
    leaves it world-readable in between), and the final file is 0600 too, whatever the umask."""
    data_dir = tmp_path / "data"
    seen: list[dict[str, int]] = []
    real_chmod, real_link, real_replace = Path.chmod, os.link, os.replace

    def spy_chmod(self: Path, mode: int, **kw: object) -> None:
        seen.append(_modes_of_secret_files(data_dir))
        real_chmod(self, mode, **kw)  # type: ignore[arg-type]

    def spy_link(src: object, dst: object, **kw: object) -> None:
        seen.append(_modes_of_secret_files(data_dir))
        real_link(src, dst, **kw)  # type: ignore[arg-type]

    def spy_replace(src: object, dst: object, **kw: object) -> None:
        seen.append(_modes_of_secret_files(data_dir))
        real_replace(src, dst, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "chmod", spy_chmod)
    monkeypatch.setattr(os, "link", spy_link)
    monkeypatch.setattr(os, "replace", spy_replace)
    old_umask = os.umask(0o022)
    try:
        pepper = Settings(data_dir=data_dir, key_pepper=None).pepper()
    finally:
        os.umask(old_umask)
    assert len(pepper) == 64
    assert seen, "the pepper was not written through link/replace/chmod at all"
    for modes in seen:
        assert all(m == 0o600 for m in modes.values()), modes
    assert _modes_of_secret_files(data_dir) == {"pepper": 0o600}


def test_processes_racing_to_create_the_pepper_all_use_the_same_one(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    got: list[bytes] = []
    barrier = threading.Barrier(8)

    def one() -> None:
        barrier.wait()
        got.append(Settings(data_dir=data_dir, key_pepper=None).pepper())

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and len(set(got)) == 1
    assert (data_dir / "pepper").read_bytes().strip() == got[0]
    assert [p.name for p in data_dir.iterdir()] == ["pepper"]  # no temp file left behind
