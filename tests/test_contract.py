"""The server's /openapi.json is its contract: requests generated from the served schema (Hypothesis with
hypothesis-jsonschema) against a real `medkge serve` over HTTP get no 5xx, only statuses the schema lists for
that operation, and bodies that conform to the schema listed for that status; every status the server can send
is listed; 405 carries Allow; HEAD and OPTIONS answer as standard clients expect; unknown fields and query
parameters are refused naming the closest known one.

CI runs 100 generated requests per operation with a fixed seed (``derandomize``); a nightly-sized run:
``MEDKGE_CONTRACT_EXAMPLES=2000 MEDKGE_CONTRACT_SEED=random python -m pytest tests/test_contract.py``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
hypothesis = pytest.importorskip("hypothesis")
hypothesis_jsonschema = pytest.importorskip("hypothesis_jsonschema")
jsonschema = pytest.importorskip("jsonschema")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import medkge  # noqa: E402
from medkge.cli import main  # noqa: E402

from .conftest import train_tiny  # noqa: E402
from .test_serve import start_server, stop  # noqa: E402

EXAMPLES = int(os.environ.get("MEDKGE_CONTRACT_EXAMPLES", "100"))
RANDOM = os.environ.get("MEDKGE_CONTRACT_SEED", "") == "random"
MAX_BATCH = 5  # small lists keep the generated bodies (and the test) quick


@pytest.fixture(scope="module")
def run_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("contract") / "run"
    train_tiny(out, dataset="kinships", model="rotate", dims=[4, 8, 16], epochs=1, eval_every=0)
    return out


@pytest.fixture(scope="module")
def server(run_path):
    process, url = start_server(
        str(run_path), "--workers", "2", "--max-batch", str(MAX_BATCH), "--max-k", "50", "--max-seconds", "600"
    )
    try:
        yield url
    finally:
        stop(process)


@pytest.fixture(scope="module")
def schema(server) -> dict:
    return resolve(httpx.get(f"{server}/openapi.json").json())


def resolve(schema: dict) -> dict:
    """The schema with every ``$ref`` replaced by what it names (the API's schemas are not recursive)."""
    components = schema.get("components", {}).get("schemas", {})

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(copy.deepcopy(components[node["$ref"].rsplit("/", 1)[-1]]))
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def draft7(node):
    """OpenAPI 3.1's JSON Schema (2020-12) in the draft-7 words hypothesis-jsonschema reads: a tuple's
    ``prefixItems`` become ``items`` as a list, with no items beyond them."""
    if isinstance(node, list):
        return [draft7(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: draft7(v) for k, v in node.items()}
    if "prefixItems" in node:
        node["items"] = node.pop("prefixItems")
        node["additionalItems"] = False
    return node


def request_strategy(operation: dict, labels: dict[str, list[str]]):
    """(query parameters, JSON body) drawn from the operation's schema; a label-valued string is, half the time,
    a label the model has (a schema-valid request then reaches the scoring, not only the 404 of unknown labels)."""
    parameters = operation.get("parameters", [])
    params_schema = {
        "type": "object",
        "properties": {p["name"]: p["schema"] for p in parameters},
        "required": [p["name"] for p in parameters if p.get("required")],
        "additionalProperties": False,
    }
    body_schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    params = hypothesis_jsonschema.from_schema(draft7(params_schema))
    body = hypothesis_jsonschema.from_schema(draft7(body_schema)) if body_schema else st.none()

    @st.composite
    def request(draw):
        query = draw(params)
        payload = draw(body)
        for key in ("head", "tail", "entity", "relation"):
            if isinstance(query.get(key), str) and draw(st.booleans()):
                kind = "relation" if key == "relation" else "entity"
                if query.get("ids"):
                    query[key] = str(draw(st.integers(0, len(labels[kind]) - 1)))
                else:
                    query[key] = draw(st.sampled_from(labels[kind]))
        for item in (payload or {}).get("queries", []):
            for key in ("head", "tail", "relation"):
                if key in item and draw(st.booleans()):
                    item[key] = draw(st.sampled_from(labels["relation" if key == "relation" else "entity"]))
        for i, _ in enumerate((payload or {}).get("triples", [])):
            if draw(st.booleans()):
                kinds = ("entity", "relation", "entity")
                payload["triples"][i] = [draw(st.sampled_from(labels[kind])) for kind in kinds]
        text = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in query.items() if v is not None}
        return text, payload

    return request()


def check_answer(operation: dict, answer: httpx.Response, where: str) -> None:
    """No 5xx; a status the operation lists; a body that conforms to that status's schema."""
    assert answer.status_code < 500, (where, answer.status_code, answer.text[:500])
    listed = operation["responses"]
    assert str(answer.status_code) in listed, (where, answer.status_code, answer.text[:500])
    body_schema = listed[str(answer.status_code)]["content"]["application/json"]["schema"]
    jsonschema.validate(answer.json(), body_schema, cls=jsonschema.Draft202012Validator)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/predict"), ("POST", "/predict"), ("POST", "/score"), ("GET", "/similar"), ("GET", "/models")],
)
def test_requests_generated_from_the_schema_get_documented_answers(server, schema, run_path, method, path):
    operation = schema["paths"][path][method.lower()]
    model = medkge.load(run_path)
    labels = {"entity": model.entities, "relation": model.relations}
    statuses: Counter = Counter()

    @settings(
        max_examples=EXAMPLES,
        derandomize=not RANDOM,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(request_strategy(operation, labels))
    def one(request):
        params, body = request
        answer = client.request(method, path, params=params, json=body) if body is not None else None
        if answer is None:
            answer = client.request(method, path, params=params)
        statuses[answer.status_code] += 1
        check_answer(operation, answer, f"{method} {path} {params} {json.dumps(body)[:300]}")

    with httpx.Client(base_url=server, timeout=60) as client:
        one()
    sent = sum(statuses.values())
    if operation.get("parameters") or operation.get("requestBody"):
        assert sent >= EXAMPLES, statuses  # every example was one request
        assert statuses[200] > 0, statuses  # the generator reaches the scoring, not only errors
    assert set(statuses) <= {int(s) for s in operation["responses"]}


def test_every_status_the_server_sends_is_listed_for_its_route(server, schema):
    """Walk the routes, provoking each status a route can answer, and find it in that route's responses."""
    big = {"queries": [{"head": "person1", "relation": "term1"}] * (MAX_BATCH + 1)}
    provoked = {
        ("GET", "/predict"): [
            ({"params": {"head": "person84", "relation": "term21"}}, 200),
            ({"params": {"head": "persn84", "relation": "term21"}}, 404),
            ({"params": {"head": "person84", "relation": "term21", "k": 0}}, 422),
            ({"params": {"head": "person84", "relation": "term21", "hed": "x"}}, 422),
        ],
        ("POST", "/predict"): [
            ({"json": {"queries": [{"head": "person84", "relation": "term21"}]}}, 200),
            ({"content": b"{", "headers": {"content-type": "application/json"}}, 400),
            ({"json": {"queries": [{"head": "nobody", "relation": "term21"}]}}, 404),
            ({"json": big}, 413),
            ({"content": b"[" * (5 << 20), "headers": {"content-type": "application/json"}}, 413),
            ({"json": {"queries": [{"hed": "person84", "relation": "term21"}]}}, 422),
        ],
        ("POST", "/score"): [
            ({"json": {"triples": [["person84", "term21", "person85"]]}}, 200),
            ({"content": b"nope", "headers": {"content-type": "application/json"}}, 400),
            ({"json": {"triples": [[9999, 0, 0]]}}, 404),
            ({"json": {"triples": [[0, 0, 0]] * (MAX_BATCH + 1)}}, 413),
            ({"json": {"triples": [[0, 0, 0]], "dim": 99}}, 422),
        ],
        ("GET", "/similar"): [
            ({"params": {"entity": "person84", "k": 3}}, 200),
            ({"params": {"entity": "person8400"}}, 404),
            ({"params": {"entity": "person84", "funnel": "0:5"}}, 422),
        ],
        ("GET", "/models"): [({}, 200)],
        ("GET", "/health"): [({}, 200)],
    }
    paths = schema["paths"]
    assert {(m.upper(), p) for p, item in paths.items() for m in item} == set(provoked)
    with httpx.Client(base_url=server) as client:
        for (method, path), cases in provoked.items():
            listed = paths[path][method.lower()]["responses"]
            for options, status in cases:
                answer = client.request(method, path, **options)
                assert answer.status_code == status, (method, path, options.get("params"), answer.text[:300])
                check_answer(paths[path][method.lower()], answer, f"{method} {path}")
            # every route: another method is 405 with Allow, which every operation of the path lists
            answer = client.request("TRACE", path)
            assert answer.status_code == 405 and "405" in listed
            allowed = set(answer.headers["allow"].split(", "))
            assert {m.upper() for m in paths[path]} | {"OPTIONS"} <= allowed
            assert answer.json()["status"] == 405 and "Method Not Allowed" in answer.json()["error"]
            options = client.request("OPTIONS", path)
            assert options.status_code == 204 and set(options.headers["allow"].split(", ")) == allowed
        head = client.head("/predict", params={"head": "person84", "relation": "term21"})
        get = client.get("/predict", params={"head": "person84", "relation": "term21"})
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == get.headers["content-length"]
        assert "503" in paths["/predict"]["get"]["responses"] and "503" in paths["/score"]["post"]["responses"]


def test_a_full_worker_pool_answers_503_as_listed(run_path):
    process, url = start_server(str(run_path), "--workers", "1", "--max-pending", "1", "--max-seconds", "120")
    try:
        listed = httpx.get(f"{url}/openapi.json").json()["paths"]["/predict"]["post"]["responses"]

        async def burst():
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                body = {"queries": [{"head": "person1", "relation": "term1"}], "k": 5}
                return await asyncio.gather(*(client.post("/predict", json=body) for _ in range(30)))

        answers = asyncio.run(burst())
        busy = [a for a in answers if a.status_code == 503]
        assert busy and "503" in listed and all(a.headers["retry-after"] == "1" for a in busy)
        assert {a.status_code for a in answers} <= {200, 503}
    finally:
        stop(process)


def test_unknown_fields_and_parameters_are_refused_naming_the_closest(server):
    answer = httpx.get(f"{server}/predict", params={"head": "person84", "relation": "term21", "exclude_knwon": "true"})
    assert answer.status_code == 422
    assert answer.json()["error"] == "unknown query parameter 'exclude_knwon'; did you mean 'exclude_known'?"
    assert answer.json()["loc"] == ["exclude_knwon"]
    answer = httpx.post(f"{server}/predict", json={"queries": [{"head": "person84", "relaton": "term21"}]})
    assert answer.status_code == 422
    assert "queries.0.relaton: unknown field 'relaton'; did you mean 'relation'?" in answer.json()["error"]
    answer = httpx.post(f"{server}/score", json={"triples": [], "dims": 4})
    assert answer.status_code == 422 and "did you mean 'dim'?" in answer.json()["error"]


def test_the_schema_states_the_runs_bounds_and_is_written_without_a_server(server, run_path, capsys):
    assert main(["serve", str(run_path), "--openapi", "--max-k", "50", "--max-batch", str(MAX_BATCH)]) == 0
    written = json.loads(capsys.readouterr().out)
    served = httpx.get(f"{server}/openapi.json").json()
    assert written == served  # what a client generator reads, without starting a server
    parameters = {p["name"]: p["schema"] for p in written["paths"]["/predict"]["get"]["parameters"]}
    assert parameters["k"]["minimum"] == 1 and parameters["k"]["maximum"] == 50
    assert parameters["dim"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 16}
    item = resolve(written)["components"]["schemas"]["PredictItem"]
    assert item["oneOf"] == [{"required": ["head"]}, {"required": ["tail"]}]
    assert item["additionalProperties"] is False


def test_error_messages_echo_a_bounded_value(server):
    huge = "x" * 100_000
    answer = httpx.get(f"{server}/similar", params={"entity": huge[:60_000]})  # httpx's longest URL is 64 KiB
    assert answer.status_code == 404
    assert len(answer.json()["error"]) < 300 and "xxx..." in answer.json()["error"]
    answer = httpx.post(f"{server}/predict", json={"queries": [{"head": huge, "relation": "term1"}]})
    assert answer.status_code == 404 and len(answer.text) < 500
