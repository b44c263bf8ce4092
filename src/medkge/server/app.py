"""The FastAPI application: routes that check a request, ask the library (``LabelledModel``, medkge.inference)
on the worker pool and answer its JSON. No scoring, label lookup or cache lives here."""

import contextlib
import time
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from ..deploy import LabelledModel, prediction_json, similar_json
from ..errors import MedkgeError
from .errors import ApiError, from_library, from_validation, json_response, responses
from .methods import Methods
from .pool import Pool
from .schemas import FUNNEL_HELP, FUNNEL_PATTERN, Limits, build, dim_bounds


def span(dims: Sequence[int]) -> str:
    dims = list(dims)
    if dims == list(range(dims[0], dims[-1] + 1)) and len(dims) > 2:
        return f"{dims[0]} to {dims[-1]}"
    return ", ".join(map(str, dims)) if len(dims) <= 8 else f"{dims[0]}, {dims[1]}, ..., {dims[-1]} ({len(dims)} dims)"


def create_app(
    model: LabelledModel,
    dims: Sequence[int] | None = None,
    limits: Limits | None = None,
    workers: int = 1,
    batching: bool = True,
) -> FastAPI:
    """The application serving ``model`` at ``dims`` (default: every dim it has); scoring on ``workers`` threads."""
    limits = limits or Limits()
    available = model.inference.dims
    served = available if dims is None else sorted(set(dims))
    wrong = sorted(set(served) - set(available))
    if wrong:
        raise MedkgeError(f"--dims: this model has no dim {wrong[0]} (it serves {span(available)})")
    default_dim, served_text = served[-1], span(served)
    shapes = build(served, limits)
    known_fields = sorted({*shapes.PredictItem.model_fields, *shapes.PredictBatch.model_fields, "triples"})
    try:  # load the known triples now: the first request should not pay for it
        model.inference.known()
        exclude_error = None
    except MedkgeError as error:
        exclude_error = str(error)

    def answer(tables: Sequence[Any]) -> list[dict[str, Any]]:
        return [prediction_json(model, t) for t in tables]

    pool = Pool(lambda queries: answer(model.predict(queries)), workers, limits.max_pending, batching)
    started = time.monotonic()
    counts = {"requests": 0}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        pool.shutdown()

    app = FastAPI(
        lifespan=lifespan,
        title="medkge",
        version=_version(),
        summary=f"{model.model_name} on {model.source.get('dataset') or 'its graph'}: "
        f"any dim from {served_text} per request",
        description="Croppable knowledge graph embeddings: one model, every size, chosen per request. Every error "
        "answer is an ErrorBody; each route lists the statuses it can answer.",
    )

    def check(dim: int | None, where: Sequence[str | int] = ("dim",), funnel: str | None = None) -> int:
        """A served dim (the library checks the model's own; the server may serve fewer)."""
        d = default_dim if dim is None else dim
        if d not in served:
            raise ApiError(
                422, f"{'.'.join(map(str, where))} {d} is not served: the dims are {served_text}", loc=list(where)
            )
        if funnel is not None and int(funnel.split(":")[0]) not in served:
            loc = [*where[:-1], "funnel"]
            raise ApiError(
                422, f"funnel: dim {funnel.split(':')[0]} is not served: the dims are {served_text}", loc=loc
            )
        return d

    def query(loc: Sequence[str | int] = (), **options: Any):
        if options.get("exclude_known") and exclude_error:
            raise ApiError(
                422, f"{'.'.join(map(str, [*loc, 'exclude_known']))}: {exclude_error}", loc=[*loc, "exclude_known"]
            )
        options["dim"] = check(options.get("dim"), [*loc, "dim"], options.get("funnel"))
        return model.query(loc=loc, **options)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> Response:
        return error.response()

    @app.exception_handler(MedkgeError)
    async def library_error(request: Request, error: MedkgeError) -> Response:
        return (await from_library(error)).response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> Response:
        return from_validation(error, limits, served_text, known_fields).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        message = error.detail if isinstance(error.detail, str) else "error"
        if error.status_code == 404:
            message = f"no such endpoint: {request.url.path[:80]} (see /docs)"
        return ApiError(error.status_code, message, headers=dict(error.headers or {})).response()

    @app.exception_handler(Exception)
    async def crashed(request: Request, error: Exception) -> Response:  # a bug: say so, keep serving
        return ApiError(500, f"internal error: {type(error).__name__}: {str(error)[:200]}").response()

    k_query = Annotated[int, Query(ge=1, le=limits.max_k, description="how many answers")]
    dim_query = Annotated[int | None, Query(**dim_bounds(served), description="the dim (default: the largest served)")]
    funnel_query = Annotated[str | None, Query(pattern=FUNNEL_PATTERN, description=FUNNEL_HELP)]
    ids_query = Annotated[bool, Query(description="labels are ids: decimal integers from 0 (422 otherwise)")]

    @app.get(
        "/predict",
        summary="rank the tails (head=H) or heads (tail=T) of a query; give exactly one of head and tail",
        responses=responses(404, 422, 503, ok=shapes.PredictAnswer),
    )
    async def predict_one(
        relation: Annotated[str, Query(description="relation label (or id, with ids=true)")],
        head: Annotated[str | None, Query(description="rank the tails of (head, relation, ?); not with tail")] = None,
        tail: Annotated[str | None, Query(description="rank the heads of (?, relation, tail); not with head")] = None,
        k: k_query = 10,
        dim: dim_query = None,
        exclude_known: Annotated[bool, Query(description="drop answers that form known triples")] = False,
        ids: ids_query = False,
        funnel: funnel_query = None,
    ) -> Response:
        values = [_id(x, name) if ids else x for x, name in ((head, "head"), (tail, "tail"), (relation, "relation"))]
        q = query(
            head=values[0], tail=values[1], relation=values[2], k=k, dim=dim, exclude_known=exclude_known, funnel=funnel
        )
        return json_response(await pool.one(q))

    @app.post(
        "/predict",
        summary="rank the answers of a batch of queries, scored together",
        responses=responses(400, 404, 413, 422, 503, ok=shapes.PredictBatchAnswer),
    )
    async def predict_many(batch: shapes.PredictBatch) -> Response:  # type: ignore[name-defined]
        queries = []
        for i, q in enumerate(batch.queries):
            default = {"k": batch.k, "dim": batch.dim, "exclude_known": batch.exclude_known, "funnel": batch.funnel}
            given = {key: getattr(q, key) for key in default if getattr(q, key) is not None}
            queries.append(query(("queries", i), head=q.head, tail=q.tail, relation=q.relation, **(default | given)))
        results = await pool.run(lambda: answer(model.predict(queries)), size=len(queries))
        return json_response({"results": results})

    @app.post(
        "/score",
        summary="scores of (head, relation, tail) triples",
        responses=responses(400, 404, 413, 422, 503, ok=shapes.ScoreAnswer),
    )
    async def score(batch: shapes.ScoreBatch) -> Response:  # type: ignore[name-defined]
        d = check(batch.dim)
        triples = [model.triple_ids(t, ("triples", i)) for i, t in enumerate(batch.triples)]
        table = await pool.run(lambda: model.score_triples(triples, d), size=len(triples))
        return json_response({"dim": d, "trained_sub_model": model.is_trained(d), "results": table.to_records()})

    @app.get(
        "/similar",
        summary="the entities nearest to an entity by its d-dim embedding (cosine)",
        responses=responses(404, 422, 503, ok=shapes.SimilarAnswer),
    )
    async def similar(
        entity: Annotated[str, Query(description="entity label (or id, with ids=true)")],
        k: k_query = 10,
        dim: dim_query = None,
        ids: ids_query = False,
        funnel: funnel_query = None,
    ) -> Response:
        d = check(dim, funnel=funnel)
        e = model.entity_id(_id(entity, "entity") if ids else entity, ("entity",))
        table = await pool.run(lambda: model.similar(e, k, d, funnel))
        return json_response(similar_json(model, table))

    # the recorded validation of a finished run does not change while it is served: read once, not per request
    valid = model.recorded_metrics("valid") or {}
    valid_protocol = model.recorded_protocol("valid") if valid else None

    @app.get(
        "/models",
        summary="the model: dims served, trained dims, validation MRR per dim, dataset",
        responses=responses(ok=shapes.ModelInfo),
    )
    async def models() -> Response:
        info = {
            "model": model.model_name,
            "dataset": model.source.get("dataset"),
            "method": model.source.get("method"),
            "source": model.source,
            "entities": len(model.entities),
            "relations": len(model.relations),
            "dims": served,
            "default_dim": default_dim,
            "trained_dims": model.trained_dims,
            "croppable": model.croppable,
            "valid_mrr": {str(d): valid[d]["mrr"] for d in sorted(valid) if "mrr" in valid[d]},
            "valid_protocol": valid_protocol,
            "exclude_known": exclude_error is None,
            "limits": vars(limits),
        }
        return json_response(info)

    @app.get("/health", summary="liveness, load and uptime", responses=responses(ok=shapes.Health))
    async def health() -> Response:
        cache = model.inference.cache
        return json_response(
            {
                "status": "ok",
                "uptime_s": round(time.monotonic() - started, 3),
                "requests": counts["requests"],
                "pending": pool.pending,
                "workers": pool.workers,
                "busy_workers": pool.active,
                "threads_per_worker": pool.threads,
                "cached_dims": cache.dims if cache is not None else [],
            }
        )

    app.state.dims = served
    app.add_middleware(Methods, routes=app.routes, limit=limits.max_body, counts=counts)
    return app


def _id(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise ApiError(
            422, f"{name}: with ids=true, give an id (a non-negative integer), got {value[:80]!r}", loc=[name]
        )
    return int(value)


def _version() -> str:
    from .. import __version__

    return __version__
