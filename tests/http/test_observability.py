"""Metrics by route template, request ids in and out, JSON logs carrying the request id."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from extractor.web.logs import JsonFormatter
from extractor.web.requests import RequestContextMiddleware, request_id_var, valid_request_id
from service.http.prometheus import JobsCollector


def _metric_lines(client: TestClient, name: str) -> list[str]:
    body = client.get("/metrics").text
    return [ln for ln in body.splitlines() if ln.startswith(name)]


def test_metrics_label_latency_by_route_template_not_raw_path(
    client: TestClient, make_tenant
) -> None:  # type: ignore[no-untyped-def]
    t = make_tenant("obs")
    assert client.get(f"/v1/tenants/{t.name}/keys", headers=t.owner_headers).status_code == 200
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    lines = _metric_lines(client, "headhub_http_request_duration_seconds_count")
    assert any('route="/v1/tenants/{tenant}/keys"' in ln and 'status="200"' in ln for ln in lines)
    assert not any(t.name in ln for ln in lines)  # the raw path never becomes a label


def test_unknown_paths_share_one_label(client: TestClient) -> None:
    for i in range(3):
        assert client.get(f"/no/such/path/{i}").status_code == 404
    lines = _metric_lines(client, "headhub_http_request_duration_seconds_count")
    assert any('route="<unmatched>"' in ln and 'status="404"' in ln for ln in lines)
    assert not any("/no/such/path" in ln for ln in lines)


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    r = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123"
    generated = client.get("/healthz").headers["X-Request-ID"]
    assert len(generated) == 32
    evil = client.get("/healthz", headers={"X-Request-ID": "x" * 500})
    assert evil.headers["X-Request-ID"] != "x" * 500  # no unbounded ids in our logs


def test_request_ids_are_checked_whole() -> None:
    """`re.match` with `$` took "abc-123\\n": the newline went on into the echoed header and
    every log line of the request (docs/threats.md, "Stored text shown to other people")."""
    assert valid_request_id("abc-123") and valid_request_id("a.b:c_d-" + "x" * 56)
    assert not valid_request_id("abc-123\n")
    assert not valid_request_id("\nabc-123") and not valid_request_id("abc\n123")
    assert not valid_request_id("") and not valid_request_id("x" * 65)
    assert not valid_request_id("abc 123") and not valid_request_id("abc\r")


def test_an_incoming_id_with_a_trailing_newline_is_replaced() -> None:
    """The middleware itself, over raw ASGI (an HTTP client refuses to send such a header)."""
    sent: list[dict[str, object]] = []

    async def app(scope: object, receive: object, send: Callable[..., Awaitable[None]]) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/healthz",
        "headers": [(b"x-request-id", b"abc-123\n")],
    }
    asyncio.run(RequestContextMiddleware(app)(scope, receive, send))  # type: ignore[arg-type]
    echoed = dict(sent[0]["headers"])[b"X-Request-ID"]  # type: ignore[call-overload]
    assert echoed != b"abc-123\n" and valid_request_id(echoed.decode())


def test_metrics_expose_database_backed_and_cache_families(client: TestClient) -> None:
    body = client.get("/metrics").text
    assert "headhub_metrics_database_up 1.0" in body
    assert 'headhub_jobs{status="queued"}' in body
    assert "headhub_head_cache_hits_total" in body
    assert "headhub_head_cache_bytes" in body


def test_jobs_by_status_and_training_durations_come_from_the_database(
    app, client: TestClient, make_tenant
) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import insert

    from service.db import Base, new_id

    t = make_tenant("jobsm")
    jobs = Base.metadata.tables["jobs"]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [("succeeded", 3.0), ("succeeded", 100.0), ("failed", 7.0), ("running", None)]
    with app.state.sessionmaker.begin() as session:
        for status, seconds in rows:
            session.execute(
                insert(jobs).values(
                    id=new_id(),
                    tenant_id=t.id,
                    dataset_id="d" * 32,
                    head_name="h",
                    head_type="mlp",
                    status=status,
                    started_at=start,
                    finished_at=start + timedelta(seconds=seconds) if seconds else None,
                )
            )
    fams = {f.name: f for f in JobsCollector(app.state.sessionmaker).collect()}
    by_status = {s.labels["status"]: s.value for s in fams["headhub_jobs"].samples}
    assert by_status["succeeded"] >= 2 and by_status["failed"] >= 1 and by_status["running"] >= 1
    samples = {
        (s.name, s.labels.get("le")): s.value
        for s in fams["headhub_training_duration_seconds"].samples
        if s.labels.get("head_type") == "mlp"
    }
    assert samples[("headhub_training_duration_seconds_count", None)] == 2
    assert samples[("headhub_training_duration_seconds_sum", None)] == pytest.approx(103.0, 1e-3)
    assert samples[("headhub_training_duration_seconds_bucket", "5")] == 1
    assert samples[("headhub_training_duration_seconds_bucket", "120")] == 2


def test_jobs_collector_reports_database_down_instead_of_failing() -> None:
    class Down:
        def __call__(self) -> None:
            raise ConnectionError("db down")

    families = list(JobsCollector(Down()).collect())
    assert [f.name for f in families] == ["headhub_metrics_database_up"]
    assert families[0].samples[0].value == 0


def test_json_log_lines_carry_the_request_id() -> None:
    token = request_id_var.set("rid-42")
    try:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
        record.fields = {"status": 200}
        doc = json.loads(JsonFormatter("api").format(record))
    finally:
        request_id_var.reset(token)
    assert doc["msg"] == "hello you"
    assert doc["request_id"] == "rid-42"
    assert doc["service"] == "api"
    assert doc["status"] == 200
