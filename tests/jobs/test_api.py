"""The jobs HTTP surface: shapes, tenancy, validation, caps, idempotency and cancel."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.auth import Principal
from service.db import session_scope
from service.jobs import service
from service.jobs.schemas import JobCreate
from service.jobs.tables import Job
from tests.jobs.conftest import QUICK
from tests.jobs.helpers import seed_dataset


def _body(dataset_id: str, **over: object) -> dict:
    return {
        "dataset_id": dataset_id,
        "head": "flowers",
        "head_type": "float",
        "params": QUICK,
    } | over


@pytest.fixture
def owner(client: TestClient, make_tenant):  # type: ignore[no-untyped-def]
    creds = make_tenant("jobs")
    dataset_id = seed_dataset(client.app.state.sessionmaker, creds.id)  # type: ignore[attr-defined]
    return creds, dataset_id


def test_post_job_answers_202_queued_with_the_documented_shape(client, owner) -> None:
    creds, ds = owner
    r = client.post(
        "/v1/jobs", json=_body(ds, validation_fraction=0.25, seed=3), headers=creds.owner_headers
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["progress"] == 0.0 and job["attempt"] == 0
    assert job["error"] is None and job["metrics"] is None and job["head_version"] is None
    assert job["owner"] == creds.name and job["seed"] == 3 and job["validation_fraction"] == 0.25
    got = client.get(f"/v1/jobs/{job['id']}", headers=creds.owner_headers)
    assert got.status_code == 200 and got.json()["id"] == job["id"]


def test_list_is_the_tenants_own_jobs_in_an_envelope_with_cursor(
    client, owner, make_tenant
) -> None:
    creds, ds = owner
    ids = [
        client.post("/v1/jobs", json=_body(ds), headers=creds.owner_headers).json()["id"]
        for _ in range(3)
    ]
    other = make_tenant("other")
    other_ds = seed_dataset(client.app.state.sessionmaker, other.id)
    client.post("/v1/jobs", json=_body(other_ds), headers=other.owner_headers)
    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/jobs", params=params, headers=creds.owner_headers).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]


def test_another_tenants_dataset_and_job_are_404(client, owner, make_tenant) -> None:
    creds, ds = owner
    intruder = make_tenant("intruder")
    r = client.post("/v1/jobs", json=_body(ds), headers=intruder.owner_headers)
    assert r.status_code == 404 and r.json()["code"] == "dataset_not_found"
    job = client.post("/v1/jobs", json=_body(ds), headers=creds.owner_headers).json()
    for method, path in (
        ("GET", f"/v1/jobs/{job['id']}"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
    ):
        r = client.request(method, path, headers=intruder.owner_headers)
        assert r.status_code == 404 and r.json()["code"] == "job_not_found"
    r = client.post("/v1/jobs", json=_body(ds), headers=creds.predict_headers)
    assert r.status_code == 403


@pytest.mark.parametrize(
    "extra",
    [
        {"owner": "someone"},
        {"status": "succeeded"},
        {"version": 3},
        {"tenant_id": "x"},
        {"attempt": 9},
    ],
)
def test_body_that_sets_server_fields_is_422(client, owner, extra) -> None:
    creds, ds = owner
    r = client.post("/v1/jobs", json=_body(ds) | extra, headers=creds.owner_headers)
    assert r.status_code == 422


@pytest.mark.parametrize(
    ("over", "code"),
    [
        ({"params": {"epochz": 3}}, "invalid_params"),
        ({"params": {"hidden": 8}}, "invalid_params"),  # a float head has no hidden layer
        ({"head_type": "conv"}, "validation_error"),
        ({"validation_fraction": 0.9}, "validation_error"),
        ({"head": "Bad Name"}, "validation_error"),
    ],
)
def test_invalid_training_requests_are_422_before_queueing(client, owner, over, code) -> None:
    creds, ds = owner
    r = client.post("/v1/jobs", json=_body(ds, **over), headers=creds.owner_headers)
    assert r.status_code == 422 and r.json()["code"] == code


def test_a_dataset_with_one_label_cannot_train(client, make_tenant) -> None:
    creds = make_tenant("mono")
    ds = seed_dataset(client.app.state.sessionmaker, creds.id, labels=("only",))
    r = client.post("/v1/jobs", json=_body(ds), headers=creds.owner_headers)
    assert r.status_code == 422 and r.json()["code"] == "dataset_too_small"


def test_per_tenant_cap_on_active_jobs_is_429_and_spares_other_tenants(
    client, owner, make_tenant, settings
) -> None:
    creds, ds = owner
    cap = settings.max_active_jobs_per_tenant
    for _ in range(cap):
        assert (
            client.post("/v1/jobs", json=_body(ds), headers=creds.owner_headers).status_code == 202
        )
    r = client.post("/v1/jobs", json=_body(ds), headers=creds.owner_headers)
    assert r.status_code == 429 and r.json()["code"] == "too_many_jobs"
    assert int(r.headers["Retry-After"]) >= 1
    other = make_tenant("spared")
    other_ds = seed_dataset(client.app.state.sessionmaker, other.id)
    assert (
        client.post("/v1/jobs", json=_body(other_ds), headers=other.owner_headers).status_code
        == 202
    )
    # cancelling frees a slot
    first = client.get("/v1/jobs", params={"limit": 1}, headers=creds.owner_headers).json()[
        "items"
    ][0]
    client.post(f"/v1/jobs/{first['id']}/cancel", headers=creds.owner_headers)
    assert client.post("/v1/jobs", json=_body(ds), headers=creds.owner_headers).status_code == 202


def test_idempotency_key_returns_the_first_job_and_refuses_another_body(client, owner) -> None:
    creds, ds = owner
    headers = creds.owner_headers | {"Idempotency-Key": "train-42"}
    a = client.post("/v1/jobs", json=_body(ds), headers=headers)
    b = client.post("/v1/jobs", json=_body(ds), headers=headers)
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] == b.json()["id"]
    c = client.post("/v1/jobs", json=_body(ds, seed=1), headers=headers)
    assert c.status_code == 409 and c.json()["code"] == "idempotency_key_reused"


def test_concurrent_posts_with_one_idempotency_key_create_one_job(client, owner) -> None:
    creds, ds = owner
    factory = client.app.state.sessionmaker
    principal = Principal(key_id="k", scope="owner", tenant_id=creds.id, tenant_name=creds.name)
    body = JobCreate.model_validate(_body(ds))
    barrier = threading.Barrier(6)
    ids: list[str] = []
    errors: list[BaseException] = []

    def post() -> None:
        try:
            barrier.wait()
            with session_scope(factory) as s:
                job = service.enqueue(
                    s, principal, body, idempotency_key="race", settings=client.app.state.settings
                )
                ids.append(job.id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=post) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(ids) == 6 and len(set(ids)) == 1
    with session_scope(factory) as s:
        n = s.scalar(
            select(func.count()).where(Job.tenant_id == creds.id, Job.idempotency_key == "race")
        )
    assert n == 1


def test_an_enqueue_whose_transaction_rolls_back_leaves_no_job(client, owner) -> None:
    creds, ds = owner
    factory = client.app.state.sessionmaker
    principal = Principal(key_id="k", scope="owner", tenant_id=creds.id, tenant_name=creds.name)
    body = JobCreate.model_validate(_body(ds))
    with pytest.raises(RuntimeError), session_scope(factory) as s:
        job = service.enqueue(
            s, principal, body, idempotency_key="rb", settings=client.app.state.settings
        )
        job_id = job.id
        raise RuntimeError("the request failed after the enqueue")
    with session_scope(factory) as s:
        assert s.get(Job, job_id) is None
    r = client.get(f"/v1/jobs/{job_id}", headers=creds.owner_headers)
    assert r.status_code == 404


def test_cancel_of_a_queued_job_is_final_and_repeatable(client, owner) -> None:
    creds, ds = owner
    job = client.post("/v1/jobs", json=_body(ds), headers=creds.owner_headers).json()
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=creds.owner_headers)
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert r.json()["finished_at"] is not None
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=creds.owner_headers)
    assert again.status_code == 202 and again.json()["status"] == "cancelled"


def test_admin_lists_every_tenants_jobs_filtered_by_status_and_owner(
    client, owner, admin_headers, make_tenant
) -> None:
    creds, ds = owner
    a = client.post("/v1/jobs", json=_body(ds), headers=creds.owner_headers).json()
    b = client.post("/v1/jobs", json=_body(ds), headers=creds.owner_headers).json()
    client.post(f"/v1/jobs/{b['id']}/cancel", headers=creds.owner_headers)
    r = client.get(
        "/v1/admin/jobs", params={"owner": creds.name, "status": "cancelled"}, headers=admin_headers
    )
    assert r.status_code == 200
    ids = {j["id"] for j in r.json()["items"]}
    assert b["id"] in ids and a["id"] not in ids
    assert all(j["owner"] == creds.name for j in r.json()["items"])
    assert client.get("/v1/admin/jobs", headers=creds.owner_headers).status_code == 403
    assert (
        client.get(
            "/v1/admin/jobs", params={"owner": "nobody-here"}, headers=admin_headers
        ).status_code
        == 404
    )


def test_admin_can_train_for_a_tenant_on_the_tenants_dataset(client, owner, admin_headers) -> None:
    creds, ds = owner
    r = client.post("/v1/jobs", json=_body(ds), headers=admin_headers)
    assert r.status_code == 202 and r.json()["owner"] == creds.name
