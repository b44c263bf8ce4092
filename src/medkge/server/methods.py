"""HTTP details in front of the routes, as standard clients expect: 405 with ``Allow``, OPTIONS (204 with
``Allow``), HEAD for every GET route, unknown query parameters refused (422 naming the closest known one), the
body size limit (413 before a body is read whole), and the request count of /health."""

import difflib
from typing import Any
from urllib.parse import parse_qsl

from fastapi.routing import APIRoute

from ..inference import echo
from .errors import ApiError


class Methods:
    """ASGI middleware over the application's ``routes``."""

    def __init__(self, app: Any, routes: list[Any], limit: int, counts: dict[str, int]):
        self.app, self.limit, self.counts = app, limit, counts
        self.allowed: dict[str, set[str]] = {}
        self.params: dict[tuple[str, str], list[str]] = {}  # (path, method): the query parameters it takes
        for route in routes:
            methods = set(getattr(route, "methods", None) or ())
            if "GET" in methods:
                methods.add("HEAD")
            self.allowed.setdefault(route.path, {"OPTIONS"}).update(methods)
            if isinstance(route, APIRoute):
                names = [p.alias for p in route.dependant.query_params]
                for method in route.methods:
                    self.params[(route.path, method)] = names

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.counts["requests"] += 1
        path, method = scope["path"], scope["method"]
        allowed = self.allowed.get(path)
        if allowed is not None:
            allow = {"Allow": ", ".join(sorted(allowed))}
            if method == "OPTIONS":
                return await _send(scope, receive, send, 204, b"", allow)
            if method not in allowed:
                message = f"Method Not Allowed: {echo(method)[1:-1]} {path} (this path allows {allow['Allow']})"
                return await ApiError(405, message, headers=allow).response()(scope, receive, send)
            if method == "HEAD":  # the GET answer's status and headers, without its body
                scope = dict(scope, method="GET")
                send = _without_body(send)
            error = self._unknown_parameter(path, scope["method"], scope.get("query_string", b""))
            if error is not None:
                return await error.response()(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await ApiError(413, f"the request body is over {self.limit:,} bytes").response()(
                scope, receive, send
            )
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:  # a body without a length
                raise ApiError(413, f"the request body is over {self.limit:,} bytes")
            return message

        return await self.app(scope, limited, send)

    def _unknown_parameter(self, path: str, method: str, query: bytes) -> ApiError | None:
        known = self.params.get((path, method))
        if known is None:
            return None
        for name, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if name not in known:
                near = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
                hint = f"; did you mean {near[0]!r}?" if near else f" (known: {', '.join(known) or 'none'})"
                return ApiError(422, f"unknown query parameter {echo(name)}{hint}", loc=[name[:80]])
        return None


def _without_body(send):
    async def send_head(message):
        if message["type"] == "http.response.body":
            message = {"type": "http.response.body", "body": b"", "more_body": message.get("more_body", False)}
        await send(message)

    return send_head


async def _send(scope, receive, send, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
