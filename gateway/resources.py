"""What the routes over the services' resources share, so each is written one way: a list's page
parameters (`page_size`, `page_token`) and its answer (`{"items", "next_page_token"}`), a
PATCH's update mask, a creation's `Location`.

Never reads a page token: tokens are the services' own, opaque, only bounded in size here.
"""

# No `from __future__ import annotations`: the page parameters' bounds are closed over by the
# dependency that `page_parameters` makes, and FastAPI reads its annotations as objects.
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Query, Response
from google.protobuf import field_mask_pb2
from pydantic import BaseModel

from gateway.schemas import Page

T = TypeVar("T")

# The one version prefix every REST resource is mounted under (`gateway/app.py`).
API_PREFIX = "/v1"

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20


@dataclass(frozen=True)
class PageRequest:
    """One page of a list: at most `size` items, after `token` ("" for the first page)."""

    size: int
    token: str


def page_parameters(max_token_length: int) -> Callable[..., Coroutine[Any, Any, PageRequest]]:
    """The dependency reading `page_size` and `page_token`, the token at most
    `max_token_length` characters."""

    async def page(
        page_size: Annotated[
            int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"at most {MAX_PAGE_SIZE}")
        ] = DEFAULT_PAGE_SIZE,
        page_token: Annotated[
            str | None,
            Query(max_length=max_token_length, description="the `next_page_token` of a page"),
        ] = None,
    ) -> PageRequest:
        # Async, so FastAPI calls it on the loop rather than in a worker thread.
        return PageRequest(size=page_size, token=page_token or "")

    return page


# The runner's and the vault's page tokens fit in 300 characters, identity's in 200.
Paged = Annotated[PageRequest, Depends(page_parameters(max_token_length=300))]
IdentityPaged = Annotated[PageRequest, Depends(page_parameters(max_token_length=200))]


def listed(model: type[T], items: Iterable[T], next_page_token: str = "") -> Page[T]:
    """A gRPC list reply's items as a page; `next_page_token` is null on the last page."""
    return Page[model](items=list(items), next_page_token=next_page_token or None)  # type: ignore[valid-type]


def update_mask(body: BaseModel, *, nullable: Iterable[str] = ()) -> field_mask_pb2.FieldMask:
    """The fields a PATCH body gave: each given with a value, and those in `nullable` given as
    null too (null there means "remove")."""
    given = body.model_fields_set
    keep = set(nullable)
    paths = sorted(f for f in given if getattr(body, f) is not None or f in keep)
    return field_mask_pb2.FieldMask(paths=paths)


def set_location(response: Response, path: str) -> None:
    """The `Location` of a resource just created, under the API's prefix."""
    response.headers["Location"] = f"{API_PREFIX}{path}"
