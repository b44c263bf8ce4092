"""The request and answer shapes of the API, built per served model: the bounds of ``dim``, ``k`` and the batch
sizes are the model's and the server's own, so that its ``/openapi.json`` states them (a schema-driven client
knows them without trying)."""

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, create_model
from pydantic.json_schema import SkipJsonSchema

FUNNEL_PATTERN = r"^[1-9][0-9]*:[1-9][0-9]*$"
FUNNEL_HELP = (
    "D:K: score every entity with the D-d prefix, keep the best K, rerank them at dim "
    "(benchmarks/funnel.py measures the loss against exact ranking)"
)


@dataclass
class Limits:
    """What one request may ask for, and how much work may wait (beyond it: 413, 422 or 503)."""

    max_k: int = 1000
    max_batch: int = 1000  # queries of one POST /predict, triples of one POST /score
    max_body: int = 4 << 20  # bytes of a request body
    max_pending: int = 10_000  # queries waiting or being scored, all requests together


def dim_bounds(dims: list[int]) -> dict[str, Any]:
    """The constraint of ``dim``: within the served dims (a range's bounds, or the list of dims, which the
    server checks itself: pydantic does not enforce a schema's enum)."""
    if dims == list(range(dims[0], dims[-1] + 1)):
        return {"ge": dims[0], "le": dims[-1]}
    return {"json_schema_extra": {"enum": dims}}


@dataclass
class Shapes:
    """The pydantic models of one served model's API."""

    PredictItem: type[BaseModel]
    PredictBatch: type[BaseModel]
    ScoreBatch: type[BaseModel]
    PredictAnswer: type[BaseModel]
    PredictBatchAnswer: type[BaseModel]
    ScoreAnswer: type[BaseModel]
    SimilarAnswer: type[BaseModel]
    ModelInfo: type[BaseModel]
    Health: type[BaseModel]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a typo in a field name is an error, not silently ignored


Id = Annotated[StrictInt, Field(ge=0, description="an id (GET /models gives the number of entities, relations)")]
Label = StrictStr | Id  # a label or an id


def build(dims: list[int], limits: Limits) -> Shapes:
    """The models for a server of ``dims`` with ``limits``."""
    k_field = Annotated[StrictInt, Field(ge=1, le=limits.max_k)]
    dim_type = Annotated[StrictInt, Field(**dim_bounds(dims))]
    dim_help = "the dim to use (default: the largest served)"
    optional = SkipJsonSchema[None]  # absent, not null: the schema offers no null

    item = create_model(
        "PredictItem",
        __base__=_Strict,
        __doc__="One query: ``head`` to rank tails, or ``tail`` to rank heads (exactly one), by label or id.",
        head=(Label | optional, Field(None, description="rank the tails of (head, relation, ?)")),
        tail=(Label | optional, Field(None, description="rank the heads of (?, relation, tail)")),
        relation=(Label, Field(description="relation label or id")),
        k=(k_field | optional, Field(None, description="overrides the batch's k")),
        dim=(dim_type | optional, Field(None, description="overrides the batch's dim")),
        exclude_known=(StrictBool | optional, Field(None, description="overrides the batch's exclude_known")),
        funnel=(StrictStr | optional, Field(None, pattern=FUNNEL_PATTERN, description=FUNNEL_HELP)),
    )
    item.model_config["json_schema_extra"] = {"oneOf": [{"required": ["head"]}, {"required": ["tail"]}]}
    item.model_rebuild(force=True)
    batch = create_model(
        "PredictBatch",
        __base__=_Strict,
        queries=(list[item], Field(min_length=0, max_length=limits.max_batch)),  # type: ignore[valid-type]
        k=(k_field, Field(10, description="how many answers per query")),
        dim=(dim_type | optional, Field(None, description=dim_help)),
        exclude_known=(StrictBool, Field(False, description="drop answers that form known triples")),
        funnel=(StrictStr | optional, Field(None, pattern=FUNNEL_PATTERN, description=FUNNEL_HELP)),
    )
    score = create_model(
        "ScoreBatch",
        __base__=_Strict,
        triples=(
            list[tuple[Label, Label, Label]],
            Field(max_length=limits.max_batch, description="(head, relation, tail) labels or ids"),
        ),
        dim=(dim_type | optional, Field(None, description=dim_help)),
    )
    return Shapes(item, batch, score, *_answers())


def _answers() -> tuple[type[BaseModel], ...]:
    number = float | None  # a score is null where the model gives NaN or infinity

    class Ranked(BaseModel):
        rank: int = Field(ge=1)
        id: int = Field(ge=0)
        score: number  # type: ignore[valid-type]
        head: str | SkipJsonSchema[None] = Field(None, description="the answer's label (ranking heads)")
        tail: str | SkipJsonSchema[None] = Field(None, description="the answer's label (ranking tails)")

    class Triple(BaseModel):
        head: str
        relation: str
        tail: str

    class PredictAnswer(BaseModel):
        query: Triple = Field(description="the query's labels, '?' for the ranked side")
        dim: int
        trained_sub_model: bool
        exclude_known: bool
        funnel: str | SkipJsonSchema[None] = None
        results: list[Ranked]

    class PredictBatchAnswer(BaseModel):
        results: list[PredictAnswer]

    class Scored(BaseModel):
        head: str
        relation: str
        tail: str
        score: number  # type: ignore[valid-type]

    class ScoreAnswer(BaseModel):
        dim: int
        trained_sub_model: bool
        results: list[Scored]

    class Neighbour(BaseModel):
        rank: int = Field(ge=1)
        entity: str
        id: int = Field(ge=0)
        similarity: number  # type: ignore[valid-type]

    class SimilarAnswer(BaseModel):
        entity: str
        dim: int
        trained_sub_model: bool
        measure: str
        funnel: str | SkipJsonSchema[None] = None
        index: str | SkipJsonSchema[None] = Field(None, description="the approximate index used, if any")
        results: list[Neighbour]

    class ModelInfo(BaseModel):
        model: str
        dataset: str | None
        method: str | None
        source: dict[str, Any] = Field(description="the run's name, config hash and data checksums: no path")
        entities: int
        relations: int
        dims: list[int]
        default_dim: int
        trained_dims: list[int]
        croppable: bool
        valid_mrr: dict[str, float] = Field(description="validation MRR per trained dim, as recorded by training")
        valid_protocol: str | None = Field(
            description="how valid_mrr was measured: 'full' (filtered ranks of every validation triple among "
            "all candidates; also 'full (the N sampled candidates per side would cover all M candidates)'), "
            "'full, N of M triples (seed S)' (a subset of the validation triples) or 'sampled (N candidates per "
            "side, seed S)'; null where not recorded (a folder cropped before medkge recorded it)"
        )
        exclude_known: bool
        limits: dict[str, int]

    class Health(BaseModel):
        status: str
        uptime_s: float
        requests: int
        pending: int
        workers: int
        busy_workers: int
        threads_per_worker: int
        cached_dims: list[int]

    return PredictAnswer, PredictBatchAnswer, ScoreAnswer, SimilarAnswer, ModelInfo, Health
