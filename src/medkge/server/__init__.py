"""``medkge serve``: an HTTP API (FastAPI + uvicorn) that serves every size of one model, chosen per request.

A thin layer over the library: the routes (app.py) check a request against the served model's schema,
ask ``LabelledModel`` (medkge.inference: one crop cache, one scorer) on the worker pool (pool.py), and map
library errors to HTTP statuses in one place (errors.py). Endpoints (JSON; OpenAPI at ``/openapi.json``,
docs at ``/docs``; ``medkge serve RUN --openapi`` prints the schema without starting a server)::

    GET  /predict?head=H&relation=R&k=10&dim=40[&funnel=10:200]   tails of (H, R, ?); tail=T for heads
    POST /predict  {"queries": [{"head": ..., "relation": ...}, ...], "k": 10, "dim": 40}   scored together
    POST /score    {"triples": [[h, r, t], ...], "dim": 40}
    GET  /similar?entity=E&k=10&dim=40[&funnel=10:200]      nearest entities by cosine of the d-dim embedding
    GET  /models   GET /health
"""

try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as error:  # the serve extra is optional
    from ..errors import MedkgeError

    raise MedkgeError(f"medkge serve needs the serve extra: pip install 'medkge[serve]' ({error})") from None

from .app import create_app
from .errors import ApiError, ErrorBody
from .schemas import Limits
from .start import default_workers, openapi, serve

__all__ = ["ApiError", "ErrorBody", "Limits", "create_app", "default_workers", "openapi", "serve"]
