"""The dependencies a route declares, as annotated aliases (as fastapi/full-stack-fastapi-template's
`api/deps.py` does): `who: CurrentUser` is the signed-in person, `mesh: Services` the gRPC clients
of the upstream services. `gateway/openapi.py` documents a route's 401 and 503/504 from these.

Never a dependency with a side effect of its own here: what they do lives in `gateway/auth.py`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from gateway.auth import Principal, principal, upstreams
from gateway.upstreams import Upstreams

# 401 without a live session; renews the session cookies otherwise.
CurrentUser = Annotated[Principal, Depends(principal)]
Services = Annotated[Upstreams, Depends(upstreams)]
