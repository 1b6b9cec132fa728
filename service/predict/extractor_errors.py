"""How the API answers when the extractor fails: down -> 503, garbage -> 502, bad image -> 4xx."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from extractor.client import ExtractorBadResponse, ExtractorRejectedImage, ExtractorUnavailable
from service.errors import BadGateway, HeadhubError, ServiceUnavailable

EXTRACTOR_RETRY_AFTER_S = 5
log = logging.getLogger("headhub.extractor")


class ImageRejected(HeadhubError):
    """The extractor refused one image; carries the extractor's own 4xx status."""

    def __init__(self, status: int, detail: str, code: str) -> None:
        super().__init__(detail, code=code)
        self.status = status  # type: ignore[misc]
        self.title = {413: "Payload too large", 415: "Unsupported media type"}.get(  # type: ignore[misc]
            status, "Unprocessable content"
        )


@contextmanager
def extractor_errors(extractor: Any) -> Iterator[None]:
    """Wrap one extractor call; its failures become the service's typed errors."""
    if extractor is None:
        raise ServiceUnavailable(
            "No extractor is configured.", code="extractor_unavailable", retry_after=30
        )
    try:
        yield
    except ExtractorRejectedImage as exc:
        raise ImageRejected(
            int(exc.status),
            f"{exc.filename}: {exc.reason}",
            str(getattr(exc, "code", None) or "image_rejected"),
        ) from exc
    except ExtractorUnavailable as exc:
        retry = int(getattr(exc, "retry_after", None) or EXTRACTOR_RETRY_AFTER_S)
        raise ServiceUnavailable(
            "The feature extractor is not answering; retry shortly.",
            code="extractor_unavailable",
            retry_after=retry,
        ) from exc
    except ExtractorBadResponse as exc:
        # What was wrong names an internal address: the log gets it, the client does not.
        log.warning("extractor bad response: %s", exc)
        raise BadGateway(
            "The feature extractor sent an invalid answer; nothing was stored.",
            code="extractor_bad_response",
        ) from exc
