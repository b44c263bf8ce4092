"""The server's one error model: every error answer of every route, and the library errors mapped to HTTP once.

An error answer is ``{"status": 404, "error": "one line", "closest": [...], "loc": [...]}`` (``closest`` and
``loc`` only where they apply). Library errors map to statuses here and nowhere else:

- :class:`medkge.inference.NotFound` (an unknown label, with its closest labels; an id out of range): 404;
- any other :class:`MedkgeError` (a bad value, exclude_known without a dataset): 422;
- request validation (FastAPI/pydantic): 400 for a body that is not JSON, 413 for a list over the batch limit,
  422 otherwise, with the constraint said in the command line's words;
- 405 (with ``Allow``), 413 (body size), 503 (the worker pool is full, with ``Retry-After``), 500 (a bug).
"""

import difflib
import json
import math
from collections.abc import Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema
from starlette.concurrency import run_in_threadpool

from ..errors import MedkgeError
from ..inference import NotFound, QueryError, UnknownLabel, echo

STATUS_TEXT = {
    400: "the request body is not JSON",
    404: "an unknown label (with the closest labels) or an id out of range; or no such path",
    405: "the path does not have this method (the Allow header lists those it has)",
    413: "the request body, or a list in it, is over the server's limit",
    422: "a value breaks a constraint (loc names it): a bound, head xor tail, an unknown field or parameter",
    500: "an internal error (a bug): the server keeps serving",
    503: "the worker pool is full: retry after the Retry-After header's seconds",
}


class ErrorBody(BaseModel):
    """Every error answer of the server."""

    status: int = Field(description="the HTTP status, repeated")
    error: str = Field(description="what is wrong, one line")
    closest: list[str] | SkipJsonSchema[None] = Field(None, description="404 of an unknown label: the closest labels")
    loc: list[str | int] | SkipJsonSchema[None] = Field(None, description="the field or parameter concerned")


class ApiError(Exception):
    """An error answer: its status, one-line message and optional closest labels, field and headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        closest: list[str] | None = None,
        loc: Sequence[str | int] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.closest = status, message, closest
        self.loc = list(loc) if loc else None
        self.headers = dict(headers or {})
        if status == 503:
            self.headers.setdefault("Retry-After", "1")

    def response(self) -> Response:
        body: dict[str, Any] = {"status": self.status, "error": self.message}
        if self.closest is not None:
            body["closest"] = self.closest
        if self.loc:
            body["loc"] = self.loc
        return json_response(body, self.status, self.headers or None)


def responses(*statuses: int, ok: type[BaseModel] | None = None) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route: its 200 body and every error status it can answer."""
    out: dict[int | str, dict[str, Any]] = {}
    if ok is not None:
        out[200] = {"model": ok, "description": "the answer"}
    for status in sorted({*statuses, 405, 500}):
        out[status] = {"model": ErrorBody, "description": STATUS_TEXT[status]}
    return out


async def from_library(error: MedkgeError) -> ApiError:
    """The answer to a library error (the closest labels of an unknown label are searched off the event loop)."""
    loc = list(error.loc) if isinstance(error, QueryError) and error.loc else None
    if isinstance(error, UnknownLabel):
        closest = await run_in_threadpool(lambda: error.closest)
        return ApiError(404, str(error), closest=closest, loc=loc)
    if isinstance(error, NotFound):
        return ApiError(404, str(error), loc=loc)
    return ApiError(422, str(error), loc=loc)


_BRANCHES = {"str", "int", "bool", "float", "none", "list", "tuple", "dict"}


def from_validation(error: RequestValidationError, limits: Any, dims: str, known: Sequence[str]) -> ApiError:
    """The answer to a request that FastAPI found invalid: the first problem, in one line."""
    problems = list(error.errors())
    if any(p.get("type") == "json_invalid" for p in problems):
        return ApiError(400, "malformed JSON in the request body")
    # a misspelt field is also a missing one: name the typo, with the field it was meant to be
    typos = [p for p in problems if p.get("type") == "extra_forbidden"]
    first = (typos or problems or [{"loc": (), "msg": "invalid request", "type": ""}])[0]
    loc = [x for x in first.get("loc", ()) if x not in ("query", "body")]
    # a union's branch names (str, int, function-after[...]) are not fields
    loc = [x for x in loc if isinstance(x, int) or (x.replace("_", "a").isalpha() and x not in _BRANCHES)]
    kind, value, name = first.get("type", ""), first.get("input"), (loc[-1] if loc else "")
    where = ".".join(map(str, loc)) or "request"  # pydantic's way: queries.0.head
    if kind == "too_long" and name in ("queries", "triples"):
        size = len(value) if isinstance(value, list) else "more"
        return ApiError(413, f"a request holds at most {limits.max_batch} {name}, got {size}", loc=loc)
    if kind == "extra_forbidden":
        near = difflib.get_close_matches(str(name), known, n=1, cutoff=0.5)
        hint = f"; did you mean {near[0]!r}?" if near else f" (known: {', '.join(known)})"
        return ApiError(422, f"{where}: unknown field {echo(name)}{hint}", loc=loc)
    bounds = ("greater_than_equal", "less_than_equal", "literal_error", "enum")
    shown = str(value) if len(str(value)) <= 80 else str(value)[:80] + "..."  # a query's '0' reads as 0
    if name == "dim" and kind in bounds:
        return ApiError(422, f"{where} {shown} is not served: the dims are {dims}", loc=loc)
    if name == "k" and kind in bounds:
        return ApiError(422, f"{where} must be an integer from 1 to {limits.max_k}, got {shown}", loc=loc)
    return ApiError(422, f"{where}: {first.get('msg', 'invalid')}", loc=loc)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """JSON without spaces; NaN or infinite scores (a damaged model) as null, as JSON has no such numbers."""
    try:
        body = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:
        body = json.dumps(_finite(data), ensure_ascii=False, separators=(",", ":"))
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(v) for v in data]
    return data
