"""`GET /v1/whoami`: which scope and tenant the calling key has.

The contract has no other way for a key to learn its tenant's name (needed for
`/v1/tenants/{tenant}/keys`) or its scope without trying calls and reading 403s. Read-only,
any valid key; it lives beside the console because the console is its first user.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from service.deps import PrincipalDep

router = APIRouter(tags=["tenants"])


class WhoAmI(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"scope": "owner", "tenant": "acme", "key_id": "9f2c0d1e5b7a3c4d"},
                {"scope": "admin", "tenant": None, "key_id": "admin"},
            ]
        }
    )
    scope: Literal["admin", "owner", "predict"]
    tenant: str | None = Field(description="The key's tenant (name); null for the admin key.")
    key_id: str = Field(description="The `<key_id>` part of `hh_<key_id>_<secret>`.")


@router.get("/v1/whoami", response_model=WhoAmI)
def whoami(principal: PrincipalDep) -> WhoAmI:
    """The calling key's scope and tenant; any valid key may ask."""
    return WhoAmI(scope=principal.scope, tenant=principal.tenant_name, key_id=principal.key_id)
