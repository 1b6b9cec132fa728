"""The web console: a static single-page app served by the API at `/console`, plus
`GET /v1/whoami`, which tells a key its own scope and tenant (the console's first call)."""

from service.console.router import router

__all__ = ["router"]
