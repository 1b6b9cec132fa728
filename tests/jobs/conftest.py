"""Jobs tests run with short leases, heartbeats and backoff, so crash and retry paths take
seconds, not minutes."""

from __future__ import annotations

from typing import Any

import pytest

from service.settings import Settings
from tests.conftest import make_settings

FAST_QUEUE: dict[str, Any] = {
    "featurize_on_upload": False,
    "job_lease_s": 1.5,
    "job_heartbeat_s": 0.2,
    "job_backoff_base_s": 0.2,
    "job_backoff_max_s": 5.0,
    "job_max_attempts": 3,
    "worker_poll_s": 0.05,
    "worker_grace_s": 1.0,
    "max_active_jobs_per_tenant": 50,
}

# Trainer params that finish in a few hundred milliseconds on 24 cached 20-d vectors.
QUICK = {"epochs": 20, "patience": 5, "batch_size": 512, "lr": 0.05}


@pytest.fixture(scope="module")
def settings(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("data"), db_url, **FAST_QUEUE)
