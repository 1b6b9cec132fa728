from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.heads.refs import HEAD_NAME_PATTERN

JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dataset_id": "3f2a9c0e5b7d4e1f8a6b2c9d0e1f2a3b",
                    "head": "flowers",
                    "head_type": "float",
                    "validation_fraction": 0.2,
                    "seed": 0,
                    "params": {"epochs": 200, "weight_decay": 0.0001},
                }
            ]
        },
    )
    dataset_id: str = Field(min_length=1, max_length=32)
    head: str = Field(pattern=HEAD_NAME_PATTERN, description="Name of the head to version.")
    head_type: Literal["float", "binary", "mlp"] = Field(
        description="`float`: paper's FP last layer (b); `binary`: binary last layer (a); "
        "`mlp`: one float hidden layer, retraining more than the last layer."
    )
    validation_fraction: float = Field(0.2, ge=0.0, le=0.5)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Trainer hyper-parameters (epochs, patience, batch_size, lr, weight_decay, "
        "class_balance, monitor: `top1` or `loss` picks the best epoch on the validation split; "
        "standardize for float/mlp; hidden for mlp; calibrate for binary). "
        "Unknown keys are refused.",
    )
    priority: int = Field(0, ge=-10, le=10, description="Order among this tenant's own jobs.")
    extractor_id: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="The extractor whose features train the head (`GET /v1/extractors`); "
        "default: the default extractor.",
    )


class HeadVersionRef(BaseModel):
    ref: str = Field(examples=["acme/flowers:3"])


class JobOut(BaseModel):
    id: str
    owner: str
    kind: Literal["train", "move"] = Field(
        "train", description="`move`: a version retrained on another extractor."
    )
    status: JobStatusName
    progress: float = Field(ge=0.0, le=1.0)
    attempt: int
    max_attempts: int
    error: str | None
    metrics: dict[str, Any] | None
    head_version: HeadVersionRef | None
    dataset_id: str
    head: str
    head_type: str
    params: dict[str, Any]
    validation_fraction: float
    seed: int
    priority: int
    extractor_id: str | None = Field(
        None, description="The extractor it trains on; null: the default at run time."
    )
    from_version: int | None = Field(None, description="A move's source version.")
    promote_if_not_worse: bool = False
    cancel_requested: bool
    idempotency_key: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    run_after: datetime


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None
