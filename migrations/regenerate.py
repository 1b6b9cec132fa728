"""Regenerate the single initial migration from the models (`make migration`).

headhub has not shipped a release yet, so the schema is one migration that creates everything.
After the first release, new migrations are added with `alembic revision --autogenerate` instead.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from alembic import command

from service.db import alembic_config

VERSIONS = Path(__file__).parent / "versions"


def main() -> None:
    for old in VERSIONS.glob("0001_*.py"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = alembic_config(f"sqlite:///{tmp}/scratch.db")
        command.revision(
            cfg, message="initial schema", autogenerate=True, rev_id="0001", head="base"
        )
    for new in VERSIONS.glob("0001_*.py"):
        new.rename(VERSIONS / "0001_initial.py")
    print(f"wrote {VERSIONS / '0001_initial.py'}")


if __name__ == "__main__":
    main()
