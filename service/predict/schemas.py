"""Prediction request and response bodies (api.md, Prediction)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_HEADS_PER_REQUEST = 16
MAX_FEATURE_ROWS = 1024

RESULT_EXAMPLE: dict[str, Any] = {
    "extractor_id": "9f2c0d1e" + "0" * 56,
    "extractors": {"acme/flowers:3": "9f2c0d1e" + "0" * 56, "globex/colours:1": "4a7b" + "0" * 60},
    "results": [
        {
            "filename": "garden.jpg",
            "predictions": {
                "acme/flowers:3": [
                    {"label": "rose", "score": 0.83},
                    {"label": "tulip", "score": 0.11},
                ],
                "globex/colours:1": [{"label": "red", "score": 0.97}],
            },
        }
    ],
}


class Prediction(BaseModel):
    label: str
    score: float = Field(description="Softmax probability over the head's labels.")


class ImageResult(BaseModel):
    filename: str = Field(description="The part's file name; `features[i]` for feature input.")
    predictions: dict[str, list[Prediction]] = Field(
        description="Top-k per head, keyed by the resolved reference `<owner>/<name>:<version>`."
    )


class PredictResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [RESULT_EXAMPLE]})

    extractor_id: str = Field(description="The extractor of the first head named.")
    extractors: dict[str, str] = Field(
        default_factory=dict,
        description="Which extractor served each head: resolved reference -> extractor id.",
    )
    results: list[ImageResult]


class FeaturesRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "extractor_id": "9f2c0d1e" + "0" * 56,
                    "heads": ["acme/flowers@production"],
                    "top_k": 3,
                    "features": [[0.12, -0.5, 1.3, 0.0]],
                },
                {
                    "extractor_id": "9f2c0d1e" + "0" * 56,
                    "heads": ["acme/flowers-binary"],
                    "top_k": 3,
                    "features": ["q83vEg=="],
                },
            ]
        },
    )

    extractor_id: str = Field(min_length=1, max_length=128)
    heads: list[str] = Field(min_length=1, max_length=MAX_HEADS_PER_REQUEST)
    top_k: int = Field(default=5, ge=1, le=100)
    features: list[list[float]] | list[str] = Field(
        min_length=1,
        max_length=MAX_FEATURE_ROWS,
        description="Float vectors (B, D), or base64 of packed sign bits (bit i = x[i] >= 0, "
        "numpy packbits little bit order), which only binary heads accept.",
    )
