"""The README stays true: two-command quick start, every setting documented, links resolve."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_quick_start_is_exactly_make_run_and_make_test() -> None:
    section = README.split("## Quick start", 1)[1].split("##", 1)[0]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    commands = [ln.split("#", 1)[0].strip() for ln in block.strip().splitlines()]
    assert commands == ["make run", "make test"]


def test_every_setting_is_in_the_configuration_table() -> None:
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    missing = [name for name in Settings.model_fields if f"HEADHUB_{name.upper()}" not in table]
    assert not missing, f"document these settings in README.md: {missing}"


def test_relative_links_point_at_files_that_exist() -> None:
    links = re.findall(r"\]\(((?:docs|bench)/[^)#]+)\)", README)
    assert links
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, missing


def test_every_client_command_in_the_journey_exists() -> None:
    from typer.testing import CliRunner

    from service.commands.cli import app

    journey = README.split("## The tenant journey", 1)[1].split("\n## ", 1)[0]
    commands = {m.group(1) for m in re.finditer(r"^headhub ([a-z]+)", journey, re.M)}
    assert {"upload", "train", "predict", "publish", "export"} <= commands
    for name in commands:
        assert CliRunner().invoke(app, [name, "--help"]).exit_code == 0, name


def upgrade_commands() -> list[list[str]]:
    """The commands of "Upgrading the extractor" as a shell splits them, comments dropped;
    tests/commands/test_up.py runs them as written on `headhub up`."""
    section = README.split("## Upgrading the extractor", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    return [shlex.split(ln, comments=True) for ln in block.strip().splitlines()]


def test_the_extractor_upgrade_path_is_five_commands_that_exist() -> None:
    from typer.testing import CliRunner

    from service.commands.cli import app

    commands = upgrade_commands()
    assert len(commands) == 5 and all(c[0] == "headhub" for c in commands)
    assert [c[1:3] for c in commands] == [
        ["extractor", "install"],
        ["extractors", "register"],
        ["extractors", "default"],
        ["extractors", "move"],
        ["extractors", "deprecate"],
    ]
    for c in commands:
        assert CliRunner().invoke(app, [*c[1:3], "--help"]).exit_code == 0, c
