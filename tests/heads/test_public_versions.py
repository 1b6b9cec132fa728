"""A public head shows other tenants what it predicts and how well, not the owner's data
(docs/threats.md, "What one tenant learns about others, and about the service"): no dataset or job
ids, no per-class image counts."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import update

from service.db import session_scope
from service.heads.tables import HeadVersion
from tests.conftest import ADMIN_HEADERS
from tests.heads.helpers import add_version

METRICS = {
    "val_top1": 0.9,
    "n_train": 80,
    "per_class": {
        "rose": {"precision": 0.9, "recall": 0.8, "support": 13},
        "tulip": {"precision": 0.7, "recall": 1.0, "support": 7},
    },
    "confusion_matrix": [[10, 3], [0, 7]],
}


def test_other_tenants_see_public_versions_without_provenance_or_counts(
    client: TestClient, make_tenant, app
) -> None:
    owner, other = make_tenant("own"), make_tenant("oth")
    version, _ = add_version(app, owner.id, "flowers", labels=["rose", "tulip"], metrics=METRICS)
    with session_scope(app.state.sessionmaker) as s:  # as a job registers it
        s.execute(
            update(HeadVersion)
            .where(HeadVersion.id == version.id)
            .values(dataset_id="d" * 32, job_id="j" * 32)
        )
    r = client.patch(
        f"/v1/heads/{owner.name}/flowers",
        json={"visibility": "public"},
        headers=owner.owner_headers,
    )
    assert r.status_code == 200
    mine = client.get(f"/v1/heads/{owner.name}/flowers/versions/1", headers=owner.owner_headers)
    assert mine.json()["metrics"]["per_class"]["rose"]["support"] == 13
    assert mine.json()["metrics"]["confusion_matrix"] == [[10, 3], [0, 7]]
    assert mine.json()["dataset_id"] == "d" * 32 and mine.json()["job_id"] == "j" * 32

    for path in (f"/v1/heads/{owner.name}/flowers/versions/1", f"/v1/heads/{owner.name}/flowers"):
        seen = client.get(path, headers=other.predict_headers)
        assert seen.status_code == 200, seen.text
        body = seen.json()
        version = body if "version" in body else body["versions"][0]
        assert version["dataset_id"] is None and version["job_id"] is None
        metrics = version["metrics"]
        assert "confusion_matrix" not in metrics
        assert metrics["per_class"]["rose"] == {"precision": 0.9, "recall": 0.8}
        assert metrics["val_top1"] == 0.9
    admin = client.get(f"/v1/heads/{owner.name}/flowers/versions/1", headers=ADMIN_HEADERS)
    assert admin.json()["metrics"]["per_class"]["tulip"]["support"] == 7
