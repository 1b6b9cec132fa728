"""Real `headhub worker` processes against one database: SIGKILL mid-training, several
processes racing, SIGTERM draining, and the whole path from upload to prediction.

Handing a job back when the grace period runs out is tested in-process (test_queue.py), through
the same `Worker.stop()` the SIGTERM handler calls.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient

from extractor.client import ExtractorClient
from service.jobs.worker import Worker
from service.settings import Settings
from tests.conftest import make_settings
from tests.datasets import makers
from tests.fixtures.processes import HeadhubProcess, settings_env
from tests.jobs.conftest import FAST_QUEUE
from tests.jobs.helpers import add_job, job_row, seed_dataset, versions_of_job, wait_for

pytestmark = pytest.mark.slow

# A fresh worker process imports torch before it claims anything: tens of seconds on a busy
# 2-core machine. Poll gently: on SQLite every read here also takes the write lock.
STARTUP_S = 180.0
# 60 epochs x the worker's epoch delay: the Adam loop, whose epochs the delay slows down.
SLOW = {"epochs": 60, "patience": 0, "batch_size": 512, "lr": 0.05, "solver": "adam"}


@pytest.fixture(scope="module")
def extractor_id(extractor_process: str) -> str:
    return str(httpx.get(f"{extractor_process}/v1/info", timeout=10).json()["id"])


@pytest.fixture(scope="module")
def settings(
    db_url: str, tmp_path_factory: pytest.TempPathFactory, extractor_process: str
) -> Settings:
    # Leases a few times longer than in-process tests: a fresh worker process on a busy machine
    # can stall for over a second (imports, GIL), and an expired lease means a legitimate rerun.
    over = {
        "extractor_urls": [extractor_process],
        "extractor_timeout_s": 10.0,  # the default: worker processes share a busy machine
        "job_lease_s": 6.0,
        "job_heartbeat_s": 0.5,
    }
    return make_settings(tmp_path_factory.mktemp("data"), db_url, **(FAST_QUEUE | over))


@pytest.fixture
def spawn(settings: Settings, headhub_process) -> Callable[..., HeadhubProcess]:  # type: ignore[no-untyped-def]
    """`spawn(concurrency, epoch_delay_s=None, **settings)`: a `headhub worker` on this module's
    settings (overridden by `settings`); training slowed by `epoch_delay_s` per epoch."""

    def start(
        concurrency: int = 1, epoch_delay_s: float | None = None, **over: object
    ) -> HeadhubProcess:
        env = settings_env(settings.model_copy(update=over)) | {"HEADHUB_LOG_FORMAT": "text"}
        return headhub_process(  # type: ignore[no-any-return]
            "worker", "--concurrency", str(concurrency), env=env, epoch_delay_s=epoch_delay_s
        )

    return start


@pytest.fixture
def owner(client: TestClient, make_tenant, extractor_id):  # type: ignore[no-untyped-def]
    creds = make_tenant("proc")
    factory = client.app.state.sessionmaker  # type: ignore[attr-defined]
    return creds, seed_dataset(factory, creds.id, extractor_id=extractor_id)


def test_a_sigkilled_worker_is_rescued_after_its_lease_with_one_version(
    client, owner, spawn, settings
) -> None:
    creds, ds = owner
    factory = client.app.state.sessionmaker
    job_id = add_job(factory, creds.id, ds, head="rescued", params=SLOW)
    victim = spawn(epoch_delay_s=0.1)
    wait_for(lambda: job_row(factory, job_id).progress > 0.3, timeout=STARTUP_S, every=0.25)
    victim.signal(signal.SIGKILL)
    victim.wait(10)
    assert job_row(factory, job_id).status == "running"  # nobody knows yet
    rescuer = Worker(settings, session_factory=factory, blobs=client.app.state.blobs)
    wait_for(lambda: rescuer.run_once(), timeout=30, every=0.1)  # claimable once the lease ends
    job = client.get(f"/v1/jobs/{job_id}", headers=creds.owner_headers).json()
    assert job["status"] == "succeeded" and job["attempt"] == 2, victim.log()
    assert job["head_version"] == {"ref": f"{creds.name}/rescued:1"}
    assert versions_of_job(factory, job_id) == 1
    head = client.get(f"/v1/heads/{creds.name}/rescued", headers=creds.owner_headers).json()
    assert [v["version"] for v in head["versions"]] == [1]


def test_worker_processes_racing_over_jobs_run_each_once_and_exit_0_on_sigterm(
    client, owner, spawn
) -> None:
    creds, ds = owner
    factory = client.app.state.sessionmaker
    ids = [add_job(factory, creds.id, ds, head=f"race-{i}") for i in range(8)]
    workers = [spawn(concurrency=2), spawn(concurrency=2)]
    try:
        wait_for(
            lambda: all(job_row(factory, i).status == "succeeded" for i in ids),
            timeout=STARTUP_S,
            every=0.25,
        )
    except AssertionError:
        states = [(job_row(factory, i).status, job_row(factory, i).error) for i in ids]
        for w in workers:
            w.signal(signal.SIGUSR1)  # faulthandler: every thread's stack into the log
        time.sleep(1)
        logs = "\n".join(w.log()[-6000:] for w in workers)
        raise AssertionError(f"{states}\n{logs}") from None
    for w in workers:
        w.signal(signal.SIGTERM)
    assert [w.wait(30) for w in workers] == [0, 0]
    assert all(job_row(factory, i).attempt == 1 for i in ids)
    assert all(versions_of_job(factory, i) == 1 for i in ids)
    ran_by = {job_row(factory, i).worker_id for i in ids}
    assert ran_by == {None}  # cleared at the end; who ran what is in the logs


def test_sigterm_lets_a_short_job_finish_then_exits_0(client, owner, spawn) -> None:
    creds, ds = owner
    factory = client.app.state.sessionmaker
    job_id = add_job(factory, creds.id, ds, head="drained", params=SLOW | {"epochs": 20})
    worker = spawn(epoch_delay_s=0.05, worker_grace_s=60)
    wait_for(lambda: job_row(factory, job_id).progress > 0.2, timeout=STARTUP_S, every=0.25)
    worker.signal(signal.SIGTERM)
    assert worker.wait(60) == 0, worker.log()
    job = job_row(factory, job_id)
    assert job.status == "succeeded" and job.attempt == 1
    assert versions_of_job(factory, job_id) == 1


def test_upload_train_and_predict_through_the_api_with_a_real_extractor(
    client, make_tenant, settings
) -> None:
    creds = make_tenant("e2e")
    h = creds.owner_headers
    ds = client.post("/v1/datasets", json={"name": "colours"}, headers=h).json()["id"]
    shades = {"red": lambda i: (200 + i * 5, 20, 20), "blue": lambda i: (20, 20, 200 + i * 5)}
    for label, colour in shades.items():
        files = [(f"{label}{i}.png", makers.png(32, 32, colour(i))) for i in range(8)]
        r = client.post(
            f"/v1/datasets/{ds}/images",
            data={"label": label},
            files=[("files", (n, d, "image/png")) for n, d in files],
            headers=h,
        )
        assert r.status_code == 200 and r.json()["added"] == 8, r.text
    body = {"dataset_id": ds, "head": "colours", "head_type": "float", "validation_fraction": 0.25}
    job = client.post("/v1/jobs", json=body, headers=h).json()
    factory = client.app.state.sessionmaker
    extractor = ExtractorClient(settings.extractor_urls, timeout=10)
    worker = Worker(
        settings, session_factory=factory, extractor=extractor, blobs=client.app.state.blobs
    )
    assert worker.run_once()
    done = client.get(f"/v1/jobs/{job['id']}", headers=h).json()
    assert done["status"] == "succeeded", done["error"]
    assert done["metrics"]["n_train"] + done["metrics"]["n_val"] == 16
    r = client.post(
        "/v1/predict",
        params={"heads": "colours", "top_k": 1},
        files=[("files", ("probe.png", makers.png(32, 32, (210, 20, 20)), "image/png"))],
        headers=creds.predict_headers,
    )
    assert r.status_code == 200, r.text
    (result,) = r.json()["results"]
    (preds,) = result["predictions"].values()
    assert preds[0]["label"] == "red"
