"""Client commands against the real app (FastAPI TestClient as the HTTP transport)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service.client import terminal
from service.client.http import ApiClient, CliError, head_ref
from service.client.upload import Manifest, batches, scan
from service.commands.cli import app as cli_app
from service.heads.refs import HeadRef
from tests.conftest import ADMIN_KEY

runner = CliRunner()


@pytest.fixture
def over_app(app, client: TestClient) -> Iterator[None]:  # type: ignore[no-untyped-def]
    """Route the CLI's HTTP through the app (the `client` fixture has run its lifespan)."""
    terminal.http_factory = lambda url: TestClient(app, raise_server_exceptions=False)
    yield
    terminal.http_factory = None


def test_tenant_and_key_creation_print_the_key_once(over_app: None) -> None:
    r = runner.invoke(cli_app, ["tenants", "create", "cli-acme", "--key", ADMIN_KEY])
    assert r.exit_code == 0, r.output
    assert "created tenant cli-acme" in r.output
    r = runner.invoke(
        cli_app, ["keys", "create", "cli-acme", "--scope", "predict", "--key", ADMIN_KEY]
    )
    assert r.exit_code == 0, r.output
    assert any(line.startswith("hh_") for line in r.stdout.splitlines())


def test_errors_print_the_problem_detail_and_exit_non_zero(over_app: None) -> None:
    r = runner.invoke(cli_app, ["tenants", "create", "x", "--key", ADMIN_KEY])  # too short
    assert r.exit_code == 1
    assert "error:" in r.output and "Traceback" not in r.output
    dup = runner.invoke(cli_app, ["tenants", "create", "cli-dup", "--key", ADMIN_KEY])
    assert dup.exit_code == 0
    again = runner.invoke(cli_app, ["tenants", "create", "cli-dup", "--key", ADMIN_KEY])
    assert again.exit_code == 1
    assert "cli-dup" in again.output  # the server's sentence, not a status code


def test_a_bad_key_is_reported_in_words(over_app: None) -> None:
    r = runner.invoke(cli_app, ["tenants", "list", "--key", "hh_nope_nope"])
    assert r.exit_code == 1
    assert "API key" in r.output


def test_unreachable_server_is_a_one_line_error() -> None:
    r = runner.invoke(cli_app, ["jobs", "--url", "http://127.0.0.1:9", "--key", "k"])
    assert r.exit_code == 1
    assert "Cannot reach headhub at http://127.0.0.1:9" in r.output


def test_env_vars_configure_url_and_key(over_app: None) -> None:
    r = runner.invoke(cli_app, ["tenants", "list"], env={"HEADHUB_KEY": ADMIN_KEY})
    assert r.exit_code == 0, r.output
    assert "name" in r.output


@pytest.mark.parametrize(
    ("ref", "parsed"),
    [
        ("acme/flowers", HeadRef("acme", "flowers")),
        ("flowers:3", HeadRef(None, "flowers", version=3)),
        ("acme/flowers@staging", HeadRef("acme", "flowers", alias="staging")),
    ],
)
def test_head_refs_parse(ref: str, parsed: HeadRef) -> None:
    assert head_ref(ref) == parsed
    assert str(parsed) == ref


def test_bad_head_ref_is_refused_before_any_request() -> None:
    with pytest.raises(CliError):
        head_ref("a/b/c")
    r = runner.invoke(
        cli_app, ["predict", __file__, "--head", "no/pe/x", "--url", "http://127.0.0.1:9"]
    )
    assert r.exit_code == 1
    assert "not a head reference" in r.output


def test_scan_takes_label_folders_and_ignores_hidden_and_non_images(tmp_path: Path) -> None:
    (tmp_path / "daisy" / "sub").mkdir(parents=True)
    (tmp_path / "rose").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "daisy" / "a.jpg").write_bytes(b"1")
    (tmp_path / "daisy" / "sub" / "b.PNG").write_bytes(b"2")
    (tmp_path / "daisy" / ".hidden.jpg").write_bytes(b"3")
    (tmp_path / "rose" / "notes.txt").write_bytes(b"4")
    (tmp_path / ".git" / "x.jpg").write_bytes(b"5")
    (tmp_path / "loose.jpg").write_bytes(b"6")
    images, ignored = scan(tmp_path)
    assert [(i.label, i.name) for i in images] == [("daisy", "a.jpg"), ("daisy", "sub/b.PNG")]
    assert [p.name for p in ignored] == ["notes.txt"]


def test_batches_hold_one_label_and_respect_file_and_byte_limits(tmp_path: Path) -> None:
    from service.client.upload import LocalImage

    imgs = [LocalImage("a", tmp_path, f"{i}", 10) for i in range(5)] + [
        LocalImage("b", tmp_path, "x", 10)
    ]
    sizes = [[(i.label, i.name) for i in b] for b in batches(imgs, max_files=2, max_bytes=100)]
    assert sizes == [[("a", "0"), ("a", "1")], [("a", "2"), ("a", "3")], [("a", "4")], [("b", "x")]]
    by_bytes = list(batches(imgs[:5], max_files=100, max_bytes=25))
    assert [len(b) for b in by_bytes] == [2, 2, 1]


def test_manifest_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "m.txt"
    Manifest(path).add(["a", "b"])
    m = Manifest(path)
    m.add(["b", "c"])
    assert Manifest(path).hashes == {"a", "b", "c"}
    assert path.read_text().count("b") == 1


def test_api_client_follows_cursors(app, client: TestClient) -> None:  # type: ignore[no-untyped-def]
    api = ApiClient("http://testserver", ADMIN_KEY, http=TestClient(app))
    for i in range(3):
        api.post("/v1/tenants", json={"name": f"page-{i}-tenant"})
    names = [t["name"] for t in api.items("/v1/tenants", limit=1)]
    assert {f"page-{i}-tenant" for i in range(3)} <= set(names)
    assert len(names) == len(set(names))


def test_live_accuracy_uses_history_until_the_final_metric_exists() -> None:
    from service.client.jobs import _live_accuracy

    assert _live_accuracy(None) == "-"
    assert _live_accuracy({"history": [{"val_top1": 0.5}, {"val_top1": 0.75}]}) == "0.750"
    assert _live_accuracy({"val_top1": 0.9, "history": [{"val_top1": 0.5}]}) == "0.900"
