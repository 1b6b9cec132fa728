"""Property tests of every operation in /openapi.json with two tenants as peers
(docs/architecture.md, "Tenancy and keys").

Tenant A's owner key drives schemathesis-generated requests, valid and (where the schema allows
it) invalid, at every operation of a real uvicorn server. Each generated request addresses A's
real objects, B's real objects, or made-up ones, so traffic reaches real rows, not only 404s.
Every response must: not be a 5xx, use a documented status code and content type, match the
documented body schema and headers, reject invalid input with a 4xx, and never show a string
that names one of B's private objects unless A's request carried it (a 404 may echo the id
asked for). Afterwards B's objects must be untouched.

Failures are collected, not raised inside hypothesis (no shrinking), so a run costs
`HEADHUB_FUZZ_EXAMPLES` requests per operation and mode and reports everything it found.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.settings import Settings
from tests.conftest import ADMIN_HEADERS, make_settings
from tests.integration.conftest import Peer

EXAMPLES = int(os.environ.get("HEADHUB_FUZZ_EXAMPLES", "4"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# Deleting A's objects first would turn the rest of the run into 404s: destructive calls last.
METHOD_ORDER = {"get": 0, "post": 1, "put": 2, "patch": 3, "delete": 4}
_ANNOTATIONS = {"type", "title", "description", "examples", "default"}


@pytest.fixture(scope="module")
def settings(
    db_url: str, tmp_path_factory: pytest.TempPathFactory, extractor_process: str
) -> Settings:
    return make_settings(
        tmp_path_factory.mktemp("data"),
        db_url,
        extractor_urls=[extractor_process],
        featurize_on_upload=False,
        rate_limit_per_minute=100_000,
        max_active_jobs_per_tenant=10_000,
    )


@pytest.fixture(scope="module")
def schema(client: TestClient) -> Any:
    document = client.get("/openapi.json").json()
    # The test sends A's key itself; left in, schemathesis would count dropping the declared
    # bearer header as the "invalid" part of a negative case that the key then makes valid.
    for item in document["paths"].values():
        for operation in item.values():
            operation.pop("security", None)
    return schemathesis.openapi.from_dict(document)


@dataclass
class Finding:
    operation: str
    mode: str
    status: int
    problems: list[str]
    request: str

    def __str__(self) -> str:
        problems = "; ".join(self.problems)
        return f"{self.operation} [{self.mode}] -> {self.status}: {problems}\n    {self.request}"


def path_ids(peer: Peer) -> dict[str, Any]:
    """Path parameters that address `peer`'s real objects (its spare key is the revocable one)."""
    return {
        "tenant": peer.name,
        "owner": peer.name,
        "dataset_id": peer.dataset_id,
        "job_id": peer.job_id,
        "name": peer.head,
        "version": 1,
        "alias": "production",
        "key_id": peer.spare_key_id,
        "sha256": peer.image_sha256,
        "extractor_id": peer.extractor_id,
    }


def extra_choices(a: Peer, b: Peer) -> dict[str, list[Any]]:
    """Real values for query parameters and body fields, by name."""
    return {
        "tenant": [a.name, b.name],
        "owner": [a.name, b.name],
        "dataset_id": [a.dataset_id, b.dataset_id],
        "heads": [a.head, f"{a.name}/{a.head}@production", f"{b.name}/{b.head}"],
    }


def steer(case: Any, choose: st.DataObject, pool: dict[str, list[Any]]) -> None:
    """Replace some generated query values and body ids by real ones (hypothesis decides)."""
    targets = [case.query] if case.query else []
    if isinstance(case.body, dict):
        targets.append(case.body)
    for params in targets:
        for key in [k for k in params if k in pool]:
            if choose.draw(st.booleans(), label=f"real {key}"):
                params[key] = choose.draw(st.sampled_from(pool[key]), label=key)


def leaks(asked: str, shown: str, victim: Peer) -> list[str]:
    """Names of the victim's secrets in `shown` (a response) that `asked` (the request) lacks."""
    return [what for what, s in victim.secrets().items() if s in shown and s not in asked]


def exchange(response: Any) -> tuple[str, str]:
    """(request, response) of a schemathesis call as text, for `leaks`."""
    request = response.request
    asked = f"{request.url} {dict(request.headers)!r} {request.body!r}"
    return asked, f"{response.headers!r} {response.content!r}"


def _plain(schema: dict[str, Any]) -> bool:
    """A string schema with no constraint: every value is valid, nothing can be negated."""
    if "anyOf" in schema:
        return all(_plain(s) or s.get("type") == "null" for s in schema["anyOf"])
    return schema.get("type") == "string" and set(schema) <= _ANNOTATIONS


def negatable(operation: Any) -> bool:
    """Whether schemathesis can build an invalid request: a body or a constrained parameter.
    Otherwise negative generation only spins until hypothesis gives up (seconds per call)."""
    raw = operation.definition.raw
    if "requestBody" in raw:
        return True
    return any(not _plain(p.get("schema", {})) for p in raw.get("parameters", []))


def operations(schema: Any) -> Iterator[Any]:
    ops = [r.ok() for r in schema.get_all_operations()]
    yield from sorted(ops, key=lambda op: (METHOD_ORDER.get(op.method.lower(), 9), op.path))


def fuzz(
    http: requests.Session,
    url: str,
    operation: Any,
    mode: GenerationMode,
    peers: tuple[Peer, Peer],
    seen: dict[str, set[int]],
) -> list[Finding]:
    a, b = peers
    found: dict[tuple[int, str], Finding] = {}
    pool = extra_choices(a, b)
    params = {
        p["name"] for p in operation.definition.raw.get("parameters", []) if p["in"] == "path"
    }
    strategies = [
        operation.as_strategy(
            generation_mode=mode,
            path_parameters={k: v for k, v in path_ids(peer).items() if k in params} or None,
        )
        for peer in (a, b)
    ]
    strategies.append(operation.as_strategy(generation_mode=mode))

    @hsettings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(choose=st.data())
    def run(choose: st.DataObject) -> None:
        whose = choose.draw(st.sampled_from(["A's", "B's", "made-up"]), label="ids")
        case = choose.draw(strategies[["A's", "B's", "made-up"].index(whose)], label="case")
        steer(case, choose, pool)
        response = case.call(base_url=url, session=http, headers=a.owner_headers, timeout=30)
        seen[operation.label].add(response.status_code)
        problems: list[str] = []
        try:
            case.validate_response(
                response,
                checks=CHECKS,
                headers=a.owner_headers,
                transport_kwargs={"base_url": url},
            )
        except FailureGroup as exc:  # one entry per failed check
            problems += sorted({f"{e.code} {e.title}: {e.message[:300]}" for e in exc.exceptions})
        if hidden := leaks(*exchange(response), b):
            problems.append(f"shows B's {', '.join(hidden)}")
        if problems:
            request = f"{response.request.method} {response.request.url} ({whose} ids)"
            found.setdefault(
                (response.status_code, problems[0]),
                Finding(
                    operation.label,
                    mode.value,
                    response.status_code,
                    problems,
                    f"{request} -> {response.text[:300]}",
                ),
            )

    try:
        run()
    except Unsatisfiable:  # negative mode found nothing it could make invalid
        assert mode is GenerationMode.NEGATIVE, operation.label
    return list(found.values())


def b_objects(client: TestClient, b: Peer) -> dict[str, Any]:
    h = b.owner_headers
    return {
        "dataset": client.get(f"/v1/datasets/{b.dataset_id}", headers=h).json()["image_count"],
        "job": client.get(f"/v1/jobs/{b.job_id}", headers=h).json()["status"],
        "head": client.get(f"/v1/heads/{b.name}/{b.head}", headers=h).json(),
        "keys": len(client.get(f"/v1/tenants/{b.name}/keys", headers=h).json()["items"]),
    }


def test_every_operation_conforms_and_never_shows_another_tenants_objects(
    client: TestClient, live_url: str, schema: Any, peers: tuple[Peer, Peer]
) -> None:
    b = peers[1]
    before = b_objects(client, b)
    findings: list[Finding] = []
    seen: dict[str, set[int]] = defaultdict(set)
    with requests.Session() as http:
        for operation in operations(schema):
            modes = [GenerationMode.POSITIVE]
            if negatable(operation):
                modes.append(GenerationMode.NEGATIVE)
            for mode in modes:
                started = time.monotonic()
                found = fuzz(http, live_url, operation, mode, peers, seen)
                took = time.monotonic() - started
                print(f"{took:5.1f}s {len(found)} findings {operation.label} {mode.value}")
                findings += found
    assert not findings, "\n".join(str(f) for f in findings)
    assert b_objects(client, b) == before
    # The run reached real objects: every GET of one of A's objects answered 200 at least once.
    reads = [op for op in seen if op.startswith("GET /v1/") and "{" in op]
    assert reads and all(200 in seen[op] for op in reads), dict(seen)


def test_leak_check_sees_another_tenants_names(
    client: TestClient, peers: tuple[Peer, Peer]
) -> None:
    """The leak check is not vacuous: the admin's view of all heads does name B's head."""
    a, b = peers
    everyone = client.get("/v1/admin/heads", headers=ADMIN_HEADERS)
    assert "head name" in leaks(str(everyone.request.url), everyone.text, b)
    own = client.get("/v1/heads", headers=a.owner_headers)
    assert own.status_code == 200 and leaks(str(own.request.url), own.text, b) == []
