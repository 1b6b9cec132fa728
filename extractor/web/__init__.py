"""HTTP plumbing that both headhub processes serve with: the API (`service`) and the extractor.

- `problems`: RFC 9457 problem+json documents, one shape for every error either process sends.
- `limits`: the request-body size limit (413 before or while the body is read).
- `requests`: request ids in and out, one access-log line and a latency observation per request.
- `logs`: one JSON object per log line (or text for a terminal), carrying the request id.

It lives in `extractor/` because `service/` imports the extractor package and the extractor never
imports `service/` (docs/architecture.md, "Packages"); a third top-level package for four small
modules would add a dependency arrow without removing one.
"""
