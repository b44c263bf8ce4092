"""Start-up: open the model, build the application, listen on a socket and run uvicorn until told to stop."""

import os
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..deploy import load
from ..errors import MedkgeError
from ..inference import default_funnel
from .app import create_app, span
from .schemas import Limits


def default_workers() -> int:
    """One worker per CPU core this process may use (each runs single-threaded torch ops)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def check_port(port: Any) -> int:
    """A TCP port: 0 (a free one) to 65535."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise MedkgeError(f"--port must be from 1 to 65535 (or 0 for a free one), got {port!r}")
    return port


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket (bound before the server starts, so that port 0 can be announced)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, check_port(port), type=socket.SOCK_STREAM)[0]
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets, and without it a kept-alive
        # connection waits ~40 ms for each response (Nagle's algorithm against the client's delayed ACK)
        sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        raise MedkgeError(f"cannot listen on {host}:{port} ({error.strerror or error})") from None
    return sock


def openapi(path: str | Path, *, dims: Sequence[int] | None = None, dataset: Any = None, limits: Limits | None = None):
    """The OpenAPI schema that ``medkge serve`` would publish for this model, without starting a server."""
    model = load(path, dataset=dataset)
    return create_app(model, dims, limits).openapi()


def serve(
    path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    dims: Sequence[int] | None = None,
    index: Sequence[int] = (),
    dataset: str | Path | None = None,
    device: str = "cpu",
    workers: int | None = None,
    threads: int = 1,
    limits: Limits | None = None,
    batching: bool = True,
    cache_mib: float = 256,
    tune_malloc: bool = False,
    max_requests: int | None = None,
    max_seconds: float | None = None,
    access_log: bool = False,
    announce: Callable[[str], None] = lambda line: print(line, flush=True),
) -> None:
    """Serve the run or cropped model at ``path`` on http://host:port until interrupted (or until
    ``max_requests`` requests or ``max_seconds`` seconds). Port 0 takes a free port; the first line
    ``announce``\\ d names the address. ``index``: dims whose /similar uses an approximate index (medkge.ann),
    built before the server starts.

    ``workers`` scoring threads (default: one per core) each run torch ops on ``threads`` threads (default
    1: one query is too little work to share, and on a loaded machine a second thread waits for a core).
    ``cache_mib``: memory for contiguous copies of small dims, which score faster than slices of the full
    table (medkge.inference.CropCache; 0: always slices). ``tune_malloc`` keeps freed memory for reuse
    (runtime.py; off by default: a server's blocks are small, and with it dropped copies' memory stays).
    """
    import uvicorn

    from .. import runtime

    check_port(port)
    if threads < 1:
        raise MedkgeError(f"--threads must be at least 1, got {threads}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise MedkgeError(f"--workers must be at least 1, got {workers}")
    if cache_mib < 0:
        raise MedkgeError(f"--crop-cache must be at least 0, got {cache_mib}")
    torch.set_num_threads(threads)
    if tune_malloc:
        runtime.keep_freed_memory()
    model = load(path, device=runtime.resolve_device(device), dataset=dataset, cache_bytes=int(cache_mib * 2**20))
    if model.inference.cache is not None:
        model.inference.cache.trim_memory = not tune_malloc
    limits = limits or Limits()
    app = create_app(model, dims, limits, workers=workers, batching=batching)
    if model.croppable:  # the funnel as /similar's exact-enough default on large graphs (no index there)
        model.inference.similar_funnel = default_funnel(len(model.entities), model.trained_dims)
    for d in index:
        if d not in app.state.dims:
            raise MedkgeError(f"--index: dim {d} is not served (the dims are {span(app.state.dims)})")
        model.inference.build_index(d)
    sock = listen(host, port)
    bound = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=access_log,
        limit_max_requests=max_requests,
        limit_concurrency=max(64, limits.max_pending // 4),  # connections beyond: 503 from uvicorn
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    if max_seconds is not None:
        timer = threading.Timer(max_seconds, lambda: setattr(server, "should_exit", True))
        timer.daemon = True
        timer.start()
    announce(
        f"serving {model.model_name} ({span(app.state.dims)} dims) from {path} on http://{host}:{bound} "
        f"(API docs: http://{host}:{bound}/docs); {workers} worker(s) x {threads} torch thread(s)"
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


__all__ = ["Limits", "default_workers", "listen", "openapi", "serve", "span"]
