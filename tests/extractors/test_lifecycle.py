"""Several extractors side by side, end to end on SQLite and PostgreSQL (docs/architecture.md,
"Extractor lifecycle").

One real extractor process serves the shipped default and a tiny second network (and a degenerate
third); the API and a worker use it over HTTP. Heads are trained on each, predicted together in one
request, moved from one to the other (one head, and in bulk), and extractors are registered,
deprecated and retired through the admin API.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from extractor.client import ExtractorClient
from service.datasets.tables import Feature
from service.db import make_engine, make_sessionmaker, session_scope
from service.jobs import repository as jobs_repo
from service.jobs.tables import Job
from service.jobs.worker import Worker
from tests.conftest import ADMIN_HEADERS, TenantCreds, create_tenant, make_settings
from tests.extractors.conftest import Served, colour_images

PER_LABEL = 8
N_IMAGES = 3 * PER_LABEL
# A fixed L2 penalty (no cross-validation) and few iterations: milliseconds on 24 vectors.
QUICK: dict[str, dict[str, Any]] = {
    "float": {"epochs": 30, "l2": 0.01},
    "binary": {"epochs": 20, "patience": 5, "batch_size": 512, "lr": 0.05},
}


@pytest.fixture(scope="module")
def settings(db_url, tmp_path_factory, served_extractors: Served):  # type: ignore[no-untyped-def]
    return make_settings(
        tmp_path_factory.mktemp("data"),
        db_url,
        extractor_urls=[served_extractors.url],
        extractor_timeout_s=30.0,
    )


@pytest.fixture(scope="module")
def client(app):  # type: ignore[no-untyped-def]
    """A 500 fails the test with its traceback instead of a bare status code."""
    with TestClient(app, raise_server_exceptions=True) as c:
        yield c


@pytest.fixture(scope="module")
def worker(settings) -> Worker:  # type: ignore[no-untyped-def]
    factory = make_sessionmaker(make_engine(settings.database_url))
    client = ExtractorClient(settings.extractor_urls, timeout=30.0)
    return Worker(settings, session_factory=factory, extractor=client, name="test")


def drain(worker: Worker) -> list[str]:
    """Run every claimable job; the ids in the order they were claimed."""
    claimed: list[str] = []
    while True:
        job = worker.claim("test:0")
        if job is None:
            return claimed
        claimed.append(job.id)
        worker.execute(job)


def served_images(url: str, extractor_id: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    m = re.search(
        rf'^extractor_served_images_total{{extractor="{extractor_id}"}} (\S+)$', text, re.M
    )
    return float(m.group(1)) if m else 0.0


def upload(client: TestClient, t: TenantCreds, name: str, seed: int = 0) -> str:
    r = client.post("/v1/datasets", json={"name": name}, headers=t.owner_headers)
    assert r.status_code == 201, r.text
    ds = r.json()["id"]
    for label, files in colour_images(PER_LABEL, seed).items():
        parts = [("files", (n, d, "image/png")) for n, d in files]
        r = client.post(
            f"/v1/datasets/{ds}/images", data={"label": label}, files=parts,
            headers=t.owner_headers,
        )  # fmt: skip
        assert r.status_code == 200 and r.json()["added"] == PER_LABEL, r.text
    return ds


def train(
    client: TestClient,
    t: TenantCreds,
    ds: str,
    head: str,
    extractor_id: str | None = None,
    head_type: str = "float",
) -> str:
    body: dict[str, Any] = {"dataset_id": ds, "head": head, "head_type": head_type, "seed": 3}
    body |= {"validation_fraction": 0.25, "params": QUICK[head_type]}
    if extractor_id is not None:
        body["extractor_id"] = extractor_id
    r = client.post("/v1/jobs", json=body, headers=t.owner_headers)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def job(client: TestClient, job_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/jobs/{job_id}", headers=ADMIN_HEADERS)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def version(client: TestClient, owner: str, name: str, number: int) -> dict[str, Any]:
    r = client.get(f"/v1/heads/{owner}/{name}/versions/{number}", headers=ADMIN_HEADERS)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def aliases(client: TestClient, owner: str, name: str) -> dict[str, int]:
    return client.get(f"/v1/heads/{owner}/{name}", headers=ADMIN_HEADERS).json()["aliases"]


def predict(client: TestClient, headers: dict[str, str], heads: str, n: int = 3) -> httpx.Response:
    files = [f for fs in colour_images(1, seed=99).values() for f in fs][:n]
    parts = [("files", (name, data, "image/png")) for name, data in files]
    return client.post("/v1/predict", params={"heads": heads}, files=parts, headers=headers)


def register(client: TestClient, extractor_id: str, note: str = "") -> httpx.Response:
    return client.post(
        "/v1/extractors", json={"id": extractor_id, "note": note}, headers=ADMIN_HEADERS
    )


@pytest.fixture(scope="module")
def world(client: TestClient, worker: Worker, served_extractors: Served) -> dict[str, Any]:
    """Tenants A and B; the tiny and degenerate extractors registered; heads on each."""
    s = served_extractors
    assert register(client, s.tiny_id, "tiny test network").status_code == 201
    assert register(client, s.bad_id, "constant features").status_code == 201
    a, b = create_tenant(client, "ext-a"), create_tenant(client, "ext-b")
    ds_a, ds_b = upload(client, a, "colours"), upload(client, b, "colours-b", seed=1)
    ds_gone = upload(client, b, "soon-gone", seed=2)
    jobs = {
        "d1": train(client, a, ds_a, "d1"),  # no extractor_id: the default
        "t1": train(client, a, ds_a, "t1", s.tiny_id),
        "t2": train(client, a, ds_a, "t2", s.tiny_id),
        "tb": train(client, b, ds_b, "tb", s.tiny_id, head_type="binary"),
        "x1": train(client, a, ds_a, "x1", s.bad_id),
        "x2": train(client, a, ds_a, "x2", s.bad_id),
        "bx1": train(client, b, ds_b, "bx1", s.bad_id),
        "bgone": train(client, b, ds_gone, "bgone", s.bad_id),
    }
    drain(worker)
    for name, job_id in jobs.items():
        got = job(client, job_id)
        assert got["status"] == "succeeded", (name, got)
    return {"a": a, "b": b, "ds_a": ds_a, "ds_b": ds_b, "ds_gone": ds_gone, "jobs": jobs}


# --- registry ---------------------------------------------------------------------------


def test_the_extractor_processes_default_is_registered_as_the_default(
    client, served_extractors
) -> None:
    s = served_extractors
    listed = client.get("/v1/extractors", headers=ADMIN_HEADERS).json()["items"]
    default = [e for e in listed if e["default"]]
    assert [e["id"] for e in default] == [s.default_id]
    assert default[0]["status"] == "active" and "automatically" in default[0]["note"]
    served = httpx.get(f"{s.url}/v1/info", timeout=10).json()
    one = client.get("/v1/extractor", headers=ADMIN_HEADERS).json()
    fields = ("id", "architecture", "input_size", "feature_dim", "parameters", "size_bytes")
    assert {k: one[k] for k in fields} == {k: served[k] for k in fields}


def test_registered_extractors_are_listed_with_their_pins(client, world, served_extractors):
    s = served_extractors
    t = world["a"]
    listed = {
        e["id"]: e for e in client.get("/v1/extractors", headers=t.predict_headers).json()["items"]
    }
    assert set(listed) == {s.default_id, s.tiny_id, s.bad_id}
    tiny = listed[s.tiny_id]
    assert (tiny["architecture"], tiny["input_size"], tiny["feature_dim"]) == (
        "birealnet_112",
        [3, 32, 32],
        20,
    )
    assert (
        tiny["status"] == "active" and not tiny["default"] and tiny["note"] == "tiny test network"
    )
    assert tiny["pinned_versions"] >= 3 and tiny["sunset"] is None
    assert listed[s.default_id]["pinned_versions"] >= 1
    one = client.get(f"/v1/extractors/{s.tiny_id}", headers=t.predict_headers)
    assert one.status_code == 200 and one.json()["id"] == s.tiny_id
    seen, cursor = [], None
    for _ in range(5):
        page = client.get(
            "/v1/extractors", params={"limit": 1} | ({"cursor": cursor} if cursor else {}),
            headers=t.predict_headers,
        ).json()  # fmt: skip
        seen += [e["id"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen[0] == s.default_id and sorted(seen) == sorted(listed)
    r = client.get("/v1/extractors", params={"cursor": "x"}, headers=t.predict_headers)
    assert r.status_code == 400


def test_registration_is_refused_unless_a_process_serves_a_file_with_that_sha256(
    client, world, served_extractors
) -> None:
    s = served_extractors
    r = register(client, s.tiny_id)
    assert (r.status_code, r.json()["code"]) == (409, "extractor_exists")
    r = register(client, "a" * 64)
    assert (r.status_code, r.json()["code"]) == (422, "extractor_not_served")
    r = register(client, s.misnamed_id)  # a file is named so, but hashes otherwise
    assert (r.status_code, r.json()["code"]) == (422, "checkpoint_id_mismatch")
    assert s.tiny_id in r.json()["detail"]
    r = client.post("/v1/extractors", json={"id": "a" * 64}, headers=world["a"].owner_headers)
    assert r.status_code == 403
    r = client.post("/v1/extractors", json={"id": "not-a-sha"}, headers=ADMIN_HEADERS)
    assert r.status_code == 422
    r = client.get(f"/v1/extractors/{'a' * 64}", headers=ADMIN_HEADERS)
    assert (r.status_code, r.json()["code"]) == (404, "extractor_not_found")
    ids = {e["id"] for e in client.get("/v1/extractors", headers=ADMIN_HEADERS).json()["items"]}
    assert "a" * 64 not in ids and s.misnamed_id not in ids


# --- training on a chosen extractor -------------------------------------------------------


def test_jobs_train_on_the_extractor_asked_for_and_cache_features_per_extractor(
    client, world, settings, served_extractors
) -> None:
    s, a = served_extractors, world["a"]
    jobs = world["jobs"]
    assert job(client, jobs["d1"])["extractor_id"] == s.default_id
    assert job(client, jobs["t1"])["extractor_id"] == s.tiny_id
    assert version(client, a.name, "d1", 1)["extractor_id"] == s.default_id
    assert version(client, a.name, "t1", 1)["extractor_id"] == s.tiny_id
    assert version(client, a.name, "t1", 1)["feature_dim"] == 20
    factory = make_sessionmaker(make_engine(settings.database_url))
    with session_scope(factory) as session:
        per = dict(
            session.execute(
                select(Feature.extractor_id, func.count()).group_by(Feature.extractor_id)
            ).all()
        )
    # three datasets of 24 different images; each computed once per extractor that trained on it
    assert per[s.default_id] >= N_IMAGES and per[s.tiny_id] >= 2 * N_IMAGES
    r = client.post(
        "/v1/jobs",
        json={"dataset_id": world["ds_a"], "head": "nope", "head_type": "float",
              "extractor_id": "c" * 64},
        headers=a.owner_headers,
    )  # fmt: skip
    assert (r.status_code, r.json()["code"]) == (404, "extractor_not_found")


# --- prediction across extractors -------------------------------------------------------


def test_one_predict_request_uses_each_extractor_once_per_image(
    client, world, served_extractors
) -> None:
    s, a, b = served_extractors, world["a"], world["b"]
    r = client.patch(
        f"/v1/heads/{b.name}/tb", json={"visibility": "public"}, headers=b.owner_headers
    )
    assert r.status_code == 200
    before = {e: served_images(s.url, e) for e in (s.default_id, s.tiny_id, s.bad_id)}
    heads = f"d1,t1,{b.name}/tb,t2"
    r = predict(client, a.predict_headers, heads, n=3)
    assert r.status_code == 200, r.text
    after = {e: served_images(s.url, e) for e in before}
    assert after[s.default_id] - before[s.default_id] == 3  # once per image, for d1
    assert after[s.tiny_id] - before[s.tiny_id] == 3  # once per image, for t1, tb and t2
    assert after[s.bad_id] == before[s.bad_id]  # no head needed it
    body = r.json()
    refs = [f"{a.name}/d1:1", f"{a.name}/t1:1", f"{b.name}/tb:1", f"{a.name}/t2:1"]
    assert body["extractors"] == {
        refs[0]: s.default_id,
        refs[1]: s.tiny_id,
        refs[2]: s.tiny_id,
        refs[3]: s.tiny_id,
    }
    assert body["extractor_id"] == s.default_id  # that of the first head named
    for result in body["results"]:
        assert list(result["predictions"]) == refs
        assert result["predictions"][refs[0]][0]["label"] == result["filename"].split("-")[0]
    assert "Deprecation" not in r.headers and "Sunset" not in r.headers


# --- moves ------------------------------------------------------------------------------


def test_a_move_retrains_on_the_same_split_and_keeps_what_apps_resolve(
    client, world, worker, served_extractors
) -> None:
    s, a = served_extractors, world["a"]
    old = version(client, a.name, "d1", 1)
    r = client.post(
        f"/v1/heads/{a.name}/d1/moves", json={"extractor_id": s.tiny_id}, headers=a.owner_headers
    )
    assert r.status_code == 202, r.text
    moved = r.json()
    assert (moved["kind"], moved["extractor_id"], moved["from_version"]) == (
        "move",
        s.tiny_id,
        1,
    )
    assert (moved["head_type"], moved["seed"], moved["validation_fraction"]) == ("float", 3, 0.25)
    drain(worker)
    done = job(client, moved["id"])
    assert done["status"] == "succeeded", done
    assert done["head_version"]["ref"] == f"{a.name}/d1:2"
    new = version(client, a.name, "d1", 2)
    assert new["extractor_id"] == s.tiny_id and new["head_type"] == "float"
    side = new["metrics"]["move"]
    # the old version scored again on the move's split: the same images as its own validation
    assert side["from"]["version"] == 1 and side["from"]["extractor_id"] == s.default_id
    assert side["from"]["val_top1"] == old["metrics"]["val_top1"]
    assert side["to"]["val_top1"] == new["metrics"]["val_top1"]
    assert side["from"]["n_val"] == side["to"]["n_val"] == old["metrics"]["n_val"]
    assert side["same_split"] is True and side["split"]["seed"] == 3
    assert side["promoted"] is False
    # no alias moved by itself: bare references keep resolving to version 1
    assert aliases(client, a.name, "d1") == {"production": 1}
    assert side["pinned_production"] == 1
    r = predict(client, a.predict_headers, "d1")
    assert r.json()["extractors"] == {f"{a.name}/d1:1": s.default_id}


def test_a_move_to_the_extractor_the_version_is_on_is_409_and_unknown_is_404(
    client, world, served_extractors
) -> None:
    s, a = served_extractors, world["a"]
    r = client.post(
        f"/v1/heads/{a.name}/t2/moves", json={"extractor_id": s.tiny_id}, headers=a.owner_headers
    )
    assert (r.status_code, r.json()["code"]) == (409, "same_extractor")
    r = client.post(
        f"/v1/heads/{a.name}/t2/moves", json={"extractor_id": "d" * 64}, headers=a.owner_headers
    )
    assert (r.status_code, r.json()["code"]) == (404, "extractor_not_found")
    r = client.post(
        f"/v1/heads/{a.name}/t2/moves",
        json={"extractor_id": s.default_id, "from_version": 9},
        headers=a.owner_headers,
    )
    assert r.status_code == 404
    other = world["b"]
    r = client.post(
        f"/v1/heads/{a.name}/t2/moves",
        json={"extractor_id": s.default_id},
        headers=other.owner_headers,
    )
    assert r.status_code == 404  # another tenant's private head does not exist for B


def test_promote_if_not_worse_moves_production_only_when_top1_is_not_lower(
    client, world, worker, served_extractors
) -> None:
    s, a = served_extractors, world["a"]
    r = client.put(f"/v1/heads/{a.name}/t2/aliases/production", json={"version": 1},
                   headers=a.owner_headers)  # fmt: skip
    assert r.status_code == 200
    body = {"extractor_id": s.bad_id, "promote_if_not_worse": True}
    worse = client.post(f"/v1/heads/{a.name}/t2/moves", json=body, headers=a.owner_headers)
    assert worse.status_code == 202, worse.text
    drain(worker)
    side = version(client, a.name, "t2", 2)["metrics"]["move"]
    assert side["to"]["val_top1"] < side["from"]["val_top1"]  # constant features: chance
    assert side["not_worse"] is False and side["promoted"] is False
    assert aliases(client, a.name, "t2") == {"production": 1}

    body = {"extractor_id": s.default_id, "promote_if_not_worse": True, "from_version": 1}
    better = client.post(f"/v1/heads/{a.name}/t2/moves", json=body, headers=a.owner_headers)
    assert better.status_code == 202, better.text
    drain(worker)
    side = version(client, a.name, "t2", 3)["metrics"]["move"]
    assert side["to"]["val_top1"] >= side["from"]["val_top1"]
    assert side["not_worse"] is True and side["promoted"] is True
    assert aliases(client, a.name, "t2") == {"production": 3}


def test_bulk_move_is_fair_across_tenants_reports_progress_and_fails_a_head_without_dataset(
    client, world, worker, served_extractors, settings
) -> None:
    s, a, b = served_extractors, world["a"], world["b"]
    r = client.delete(f"/v1/datasets/{world['ds_gone']}", headers=b.owner_headers)
    assert r.status_code == 204
    r = client.post(
        f"/v1/extractors/{s.bad_id}/moves",
        json={"to": s.tiny_id, "promote_if_not_worse": True},
        headers=ADMIN_HEADERS,
    )
    assert r.status_code == 202, r.text
    started = r.json()
    assert (started["total"], started["left"], started["moved"]) == (4, 4, 0)  # x1 x2 bx1 bgone
    r = client.post(
        f"/v1/extractors/{s.bad_id}/moves", json={"to": s.tiny_id}, headers=a.owner_headers
    )
    assert r.status_code == 403
    factory = make_sessionmaker(make_engine(settings.database_url))
    with session_scope(factory) as session:  # the operator's moves do not count against caps
        queued = session.scalar(
            select(func.count()).where(Job.tenant_id == a.id, Job.status == "queued")
        )
        assert queued == 2 and jobs_repo.count_active(session, a.id) == 0
    claimed = drain(worker)
    progress = client.get(f"/v1/extractors/{s.bad_id}", headers=ADMIN_HEADERS).json()["bulk_move"]
    assert (progress["total"], progress["moved"], progress["failed"], progress["left"]) == (
        4,
        3,
        1,
        0,
    )
    [failure] = progress["failures"]
    assert failure["head"] == f"{b.name}/bgone" and "no longer exists" in failure["error"]
    # tenants take turns: the claim order alternates while both have jobs queued
    with session_scope(factory) as session:
        owners = [session.get(Job, j).tenant_id for j in claimed]  # type: ignore[union-attr]
    assert owners[:4] in ([a.id, b.id, a.id, b.id], [b.id, a.id, b.id, a.id])
    for owner, name in ((a.name, "x1"), (a.name, "x2"), (b.name, "bx1")):
        new = version(client, owner, name, 2)
        assert new["extractor_id"] == s.tiny_id
        assert new["metrics"]["move"]["promoted"] is True  # constant features were the worst
        assert aliases(client, owner, name) == {"production": 2}
    r = client.post(
        f"/v1/extractors/{s.bad_id}/moves", json={"to": s.bad_id}, headers=ADMIN_HEADERS
    )
    assert (r.status_code, r.json()["code"]) == (409, "same_extractor")
    r = client.post(
        f"/v1/extractors/{'f' * 64}/moves", json={"to": s.tiny_id}, headers=ADMIN_HEADERS
    )
    assert r.status_code == 404


# --- deprecate and retire -----------------------------------------------------------------


def test_a_deprecated_extractor_answers_with_deprecation_and_sunset_headers(
    client, world, served_extractors
) -> None:
    s, a = served_extractors, world["a"]
    r = client.patch(f"/v1/extractors/{s.default_id}", json={"status": "deprecated"},
                     headers=ADMIN_HEADERS)  # fmt: skip
    assert (r.status_code, r.json()["code"]) == (409, "extractor_is_default")
    sunset = "2031-01-31T00:00:00Z"
    r = client.patch(
        f"/v1/extractors/{s.tiny_id}",
        json={"status": "deprecated", "sunset": sunset},
        headers=ADMIN_HEADERS,
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "deprecated"
    r = predict(client, a.predict_headers, "t1")
    assert r.status_code == 200
    assert re.fullmatch(r"@\d+", r.headers["deprecation"])
    since = datetime.fromtimestamp(int(r.headers["deprecation"][1:]), UTC)
    assert abs((datetime.now(UTC) - since).total_seconds()) < 3600
    assert parsedate_to_datetime(r.headers["sunset"]) == datetime(2031, 1, 31, tzinfo=UTC)
    r = predict(client, a.predict_headers, "d1")  # on the default: no headers
    assert "deprecation" not in r.headers
    r = client.patch(f"/v1/extractors/{s.tiny_id}", json={"status": "active"},
                     headers=ADMIN_HEADERS)  # fmt: skip
    assert r.status_code == 200 and r.json()["sunset"] is None
    assert "deprecation" not in predict(client, a.predict_headers, "t1").headers


def test_retiring_is_refused_while_in_use_then_its_heads_answer_410(
    client, world, served_extractors
) -> None:
    s, a, b = served_extractors, world["a"], world["b"]
    r = client.patch(f"/v1/extractors/{s.bad_id}", json={"status": "retired"},
                     headers=ADMIN_HEADERS)  # fmt: skip
    assert (r.status_code, r.json()["code"]) == (409, "extractor_in_use")
    in_use = {(h["head"], h["alias"]) for h in r.json()["heads"]}
    # t2's production was promoted away; bgone (no dataset, not moved) still resolves there
    assert in_use == {(f"{b.name}/bgone", None)}
    assert f"{b.name}/bgone" in r.json()["detail"]
    r = client.delete(f"/v1/heads/{b.name}/bgone/versions/1", headers=b.owner_headers)
    assert r.status_code == 204
    r = client.patch(f"/v1/extractors/{s.bad_id}", json={"status": "retired"},
                     headers=ADMIN_HEADERS)  # fmt: skip
    assert r.status_code == 200 and r.json()["status"] == "retired"
    r = predict(client, a.predict_headers, "x1:1")
    assert (r.status_code, r.json()["code"]) == (410, "extractor_retired")
    assert r.json()["replacement"] == f"{a.name}/x1:2"
    r = predict(client, a.predict_headers, "t2:2")  # its newer version :3 is on an active one
    assert r.status_code == 410 and r.json()["replacement"] == f"{a.name}/t2:3"
    assert predict(client, a.predict_headers, "x1").status_code == 200  # production: tiny
    r = client.post(
        "/v1/jobs",
        json={"dataset_id": world["ds_a"], "head": "x3", "head_type": "float",
              "extractor_id": s.bad_id},
        headers=a.owner_headers,
    )  # fmt: skip
    assert (r.status_code, r.json()["code"]) == (409, "extractor_retired")
    r = client.patch(f"/v1/extractors/{s.bad_id}", json={"default": True}, headers=ADMIN_HEADERS)
    assert (r.status_code, r.json()["code"]) == (409, "extractor_not_active")


def test_the_default_moves_to_another_extractor_and_new_jobs_follow(
    client, world, worker, served_extractors
) -> None:
    s, a = served_extractors, world["a"]
    r = client.patch(f"/v1/extractors/{s.tiny_id}", json={"default": True}, headers=ADMIN_HEADERS)
    assert r.status_code == 200 and r.json()["default"] is True
    listed = client.get("/v1/extractors", headers=ADMIN_HEADERS).json()["items"]
    assert [e["id"] for e in listed if e["default"]] == [s.tiny_id]
    assert client.get("/v1/extractor", headers=ADMIN_HEADERS).json()["id"] == s.tiny_id
    job_id = train(client, a, world["ds_a"], "after-switch")
    assert job(client, job_id)["extractor_id"] == s.tiny_id
    drain(worker)
    assert version(client, a.name, "after-switch", 1)["extractor_id"] == s.tiny_id
    r = client.patch(f"/v1/extractors/{s.default_id}", json={"default": True},
                     headers=ADMIN_HEADERS)  # fmt: skip
    assert r.status_code == 200


# --- the extractor for the device ---------------------------------------------------------


def test_download_gives_the_checkpoint_and_an_onnx_graph_with_the_services_features(
    client, world, served_extractors
) -> None:
    import hashlib

    import numpy as np
    import onnxruntime as ort

    from extractor.imaging import preprocess_batch

    s, a = served_extractors, world["a"]
    for extractor_id in (s.default_id, s.tiny_id):  # auto-registered, and registered by POST
        r = client.get(f"/v1/extractors/{extractor_id}/download", headers=a.predict_headers)
        assert r.status_code == 200
        assert hashlib.sha256(r.content).hexdigest() == extractor_id
    r = client.get(
        f"/v1/extractors/{s.tiny_id}/download", params={"format": "onnx"},
        headers=a.predict_headers,
    )  # fmt: skip
    assert r.status_code == 200 and r.headers["content-disposition"].endswith('.onnx"')
    files = [f for fs in colour_images(2, seed=5).values() for f in fs]
    with ExtractorClient([s.url], timeout=30) as ext:
        served = ext.features_sync(files, extractor_id=s.tiny_id)
        cfg = ext.info_sync(extractor_id=s.tiny_id)["preprocessing"]
    session = ort.InferenceSession(r.content, providers=["CPUExecutionProvider"])
    got = session.run(["features"], {"images": preprocess_batch(files, cfg).numpy()})[0]
    bits = np.packbits((got >= 0).astype(np.uint8), axis=1, bitorder="little")
    assert np.array_equal(bits, served.bits)
    r = client.get(f"/v1/extractors/{'9' * 64}/download", headers=a.predict_headers)
    assert r.status_code == 404
    r = client.get(
        f"/v1/extractors/{s.tiny_id}/download", params={"format": "zip"}, headers=a.predict_headers
    )
    assert r.status_code == 422
