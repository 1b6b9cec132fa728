"""HTTP plumbing of the API: health and readiness, Prometheus metrics, rate limits, the OpenAPI
document. What the extractor process needs too (problem+json, body limits, request ids, logs)
lives in `extractor.web`, which both processes import."""
