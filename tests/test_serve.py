"""The HTTP server: a real `medkge serve` process on a free loopback port, spoken to over HTTP. Its answers
equal LabelledModel's, any dim is served from one copy of the tables, bad input gets a 4xx JSON error,
a burst of concurrent requests all get answers, and the server stops by itself."""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

import medkge  # noqa: E402
from medkge.cli import main  # noqa: E402
from medkge.deploy import LabelledModel, prediction_json  # noqa: E402
from medkge.inference import Query, QueryError  # noqa: E402
from medkge.server import create_app  # noqa: E402

from .conftest import AppClient, random_dataset, train_tiny  # noqa: E402
from .test_scoring import CONFIGS, make_model  # noqa: E402

TRAINED = (4, 8, 16)
MAX_BATCH = 50


@pytest.fixture(scope="module")
def run_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "run"
    train_tiny(out, dataset="kinships", model="rotate", dims=list(TRAINED), epochs=1)
    return out


@pytest.fixture(scope="module")
def model(run_path) -> LabelledModel:
    return medkge.load(run_path)


def start_server(*args: str, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """`medkge serve ARGS --port 0` in a subprocess; returns it and its URL once /health answers.

    Its output goes to files (a pipe nobody reads could fill and block the server): ``process.log``.
    """
    log = tempfile.NamedTemporaryFile("w+", prefix="medkge-serve-", suffix=".log", delete=False)  # noqa: SIM115
    command = [sys.executable, "-m", "medkge", "serve", *args, "--port", "0"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    process.log = Path(log.name)  # type: ignore[attr-defined]
    log.close()
    try:
        deadline = time.monotonic() + timeout
        url = None
        while url is None:
            text = process.log.read_text()  # type: ignore[attr-defined]
            if " on http://" in text:
                url = text.split(" on ", 1)[1].split()[0]
            elif process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the server did not start: {text[-2000:]}")
            else:
                time.sleep(0.05)
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    return process, url
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    except BaseException:
        stop(process)
        raise


def stop(process: subprocess.Popen) -> str:
    """Stop the server (if it still runs) and return what it wrote."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    log: Path = process.log  # type: ignore[attr-defined]
    text = log.read_text() if log.exists() else ""
    log.unlink(missing_ok=True)
    return text


class Server(str):
    """The server's URL, with its process (for its output)."""

    process: subprocess.Popen


@pytest.fixture(scope="module")
def server(run_path):
    # bounded in time and requests, and stopped in the finally block whatever happens; the time bound leaves room
    # for this module on a loaded machine (240 s could end the server before its last tests: the likely cause of one
    # failure of the burst test beside two training jobs)
    process, url = start_server(
        str(run_path), "--workers", "2", "--max-batch", str(MAX_BATCH), "--max-seconds", "600", "--max-requests", "5000"
    )
    running = Server(url)
    running.process = process
    try:
        yield running
    finally:
        stop(process)


def expected(model: LabelledModel, side: str, anchor, relation, k=10, dim=None, exclude_known=False) -> dict:
    options = {"k": k, "dim": dim, "exclude_known": exclude_known}
    if side == "tail":
        return prediction_json(model, model.predict_tails(anchor, relation, **options))
    return prediction_json(model, model.predict_heads(relation, anchor, **options))


QUERIES = [
    # (side, anchor, relation, k, dim, exclude_known): trained and untrained dims, both sides, ids
    ("tail", "person84", "term21", 5, None, False),
    ("tail", "person84", "term21", 5, 4, True),
    ("head", "person85", "term21", 3, 7, False),
    ("head", "person85", "term21", 104, 16, True),
    ("tail", 3, 2, 10, 1, False),
    ("tail", "person1", "term0", 1, 13, True),
]


# ---- answers ------------------------------------------------------------------------------------------------
def test_predict_equals_labelled_models_predictions(server, model):
    for side, anchor, relation, k, dim, exclude in QUERIES:
        ids = isinstance(anchor, int)
        params = {"head" if side == "tail" else "tail": anchor, "relation": relation, "k": k}
        params |= (
            {"exclude_known": str(exclude).lower()} | ({"dim": dim} if dim else {}) | ({"ids": "true"} if ids else {})
        )
        answer = httpx.get(f"{server}/predict", params=params)
        assert answer.status_code == 200, answer.text
        assert answer.json() == expected(model, side, anchor, relation, k, dim, exclude)
        assert answer.json()["trained_sub_model"] == ((dim or 16) in TRAINED)


def test_predict_json_equals_the_command_lines(server, run_path, capsys):
    args = ["predict", str(run_path), "--tail", "person85", "--relation", "term21", "--top-k", "4", "--dim", "8"]
    assert main([*args, "--exclude-known", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    params = {"tail": "person85", "relation": "term21", "k": 4, "dim": 8, "exclude_known": "true"}
    assert httpx.get(f"{server}/predict", params=params).json() == printed


def test_a_batch_is_scored_together_and_answers_like_single_queries(server, model):
    queries = [
        {"head" if side == "tail" else "tail": a, "relation": r, "k": k, "dim": d, "exclude_known": x}
        for side, a, r, k, d, x in QUERIES
    ]
    answer = httpx.post(f"{server}/predict", json={"queries": queries, "k": 7})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert len(results) == len(QUERIES)
    for got, (side, anchor, relation, k, dim, exclude) in zip(results, QUERIES, strict=True):
        want = expected(model, side, anchor, relation, k, dim, exclude)
        assert got["results"] == want["results"] and got["query"] == want["query"]
    # batch defaults apply where a query says nothing
    answer = httpx.post(f"{server}/predict", json={"queries": [{"head": "person3", "relation": "term4"}], "k": 2})
    assert answer.json()["results"][0] == expected(model, "tail", "person3", "term4", k=2)


def test_score_and_similar(server, model):
    triples = [["person84", "term21", "person85"], [0, 1, 2], ["person3", "term0", "person9"]]
    answer = httpx.post(f"{server}/score", json={"triples": triples, "dim": 6})
    assert answer.status_code == 200, answer.text
    want = model.score_triples([tuple(t) for t in triples], dim=6).to_records()
    got = answer.json()
    assert got["dim"] == 6 and got["trained_sub_model"] is False
    assert [r["head"] for r in got["results"]] == [r["head"] for r in want]
    torch.testing.assert_close(
        torch.tensor([r["score"] for r in got["results"]]), torch.tensor([r["score"] for r in want])
    )
    answer = httpx.get(f"{server}/similar", params={"entity": "person84", "k": 5, "dim": 8})
    assert answer.status_code == 200, answer.text
    table = model.model_for(16).entity.detach()[..., :8].flatten(1)  # a brute-force cosine over the 8-d prefix
    cosine = torch.nn.functional.cosine_similarity(table, table[model.entity_id("person84")].unsqueeze(0), dim=1)
    cosine[model.entity_id("person84")] = -2
    top = torch.topk(cosine, 5)
    results = answer.json()["results"]
    assert [r["id"] for r in results] == top.indices.tolist()
    torch.testing.assert_close(torch.tensor([r["similarity"] for r in results]), top.values)


def test_models_health_and_docs(server, model, run_path):
    info = httpx.get(f"{server}/models").json()
    assert info["model"] == "rotate" and info["dataset"] == "kinships" and info["method"] == "med"
    assert info["dims"] == list(range(1, 17)) and info["trained_dims"] == list(TRAINED) and info["default_dim"] == 16
    recorded = medkge.Run.open(run_path).metrics("valid")
    assert info["valid_mrr"] == {str(d): recorded[d]["mrr"] for d in TRAINED}
    assert info["valid_protocol"] == recorded.protocol
    assert info["entities"] == 104 and info["exclude_known"] is True
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["workers"] == 2 and health["threads_per_worker"] == 1
    docs = httpx.get(f"{server}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    paths = httpx.get(f"{server}/openapi.json").json()["paths"]
    assert {"/predict", "/score", "/similar", "/models", "/health"} <= set(paths)


# ---- bad input ------------------------------------------------------------------------------------------------
BAD = [
    # (method, path, params or JSON body, status, text in the error)
    ("GET", "/predict", {"head": "persn84", "relation": "term21"}, 404, "head: unknown entity 'persn84'; closest:"),
    ("GET", "/predict", {"head": "person84", "relation": "trm21"}, 404, "relation: unknown relation 'trm21'"),
    ("GET", "/predict", {"head": "zzzzzz", "relation": "term21"}, 404, "no entity label is close"),
    ("GET", "/predict", {"head": "999", "relation": "1", "ids": "true"}, 404, "entity id 999 out of range"),
    ("GET", "/predict", {"head": "x", "relation": "1", "ids": "true"}, 422, "with ids=true, give an id"),
    ("GET", "/predict", {"head": "person84", "relation": "term21", "dim": 0}, 422, "dim 0 is not served"),
    ("GET", "/predict", {"head": "person84", "relation": "term21", "dim": 17}, 422, "the dims are 1 to 16"),
    ("GET", "/predict", {"head": "person84", "relation": "term21", "k": 0}, 422, "k must be an integer from 1"),
    ("GET", "/predict", {"head": "person84", "relation": "term21", "k": 5000}, 422, "k must be an integer from 1"),
    ("GET", "/predict", {"head": "person84", "relation": "term21", "k": "ten"}, 422, "k: Input should be"),
    ("GET", "/predict", {"relation": "term21"}, 422, "give head (to rank tails) or tail"),
    ("GET", "/predict", {"head": "person84", "tail": "person1", "relation": "term21"}, 422, "one of them"),
    ("GET", "/predict", {"head": "person84"}, 422, "relation: Field required"),
    ("GET", "/similar", {"entity": "persn84"}, 404, "unknown entity 'persn84'"),
    ("GET", "/similar", {"entity": "person84", "k": -1}, 422, "k must be"),
    ("GET", "/nowhere", {}, 404, "no such endpoint: /nowhere"),
    ("DELETE", "/predict", {}, 405, "Method Not Allowed"),
    ("POST", "/predict", {"queries": [{"head": "person84", "relation": "term21"}] * (MAX_BATCH + 1)}, 413, "at most"),
    ("POST", "/predict", {"queries": [{"head": "person84", "relation": "nope"}]}, 404, "queries[0].relation: unknown"),
    ("POST", "/predict", {"queries": [{"head": True, "relation": "term21"}]}, 422, "queries.0.head"),
    ("POST", "/predict", {"queries": [{"head": "person84", "relation": "term21", "dim": 99}]}, 422, "dim 99"),
    ("POST", "/predict", {"queries": "all of them"}, 422, "queries: Input should be a valid list"),
    ("POST", "/predict", b'{"queries": [{"head": "person84",', 400, "malformed JSON"),
    ("POST", "/predict", b"\xff\xfe", 400, "malformed JSON"),
    ("POST", "/score", {"triples": [["person84", "term21"]]}, 422, "triples.0"),
    ("POST", "/score", {"triples": [["person84", "term21", "nobody"]]}, 404, "triples[0][2]: unknown entity"),
    ("POST", "/score", {"triples": [[0, 0, 0]] * (MAX_BATCH + 1)}, 413, "at most 50 triples"),
    ("POST", "/score", b"x" * (5 << 20), 413, "the request body is over"),
]


def call(client, method, path, data):
    if method == "GET" or method == "DELETE":
        return client.request(method, path, params=data)
    if isinstance(data, bytes):
        return client.request(method, path, content=data, headers={"content-type": "application/json"})
    return client.request(method, path, json=data)


def test_bad_input_gets_a_4xx_json_error(server, model):
    with httpx.Client(base_url=server) as client:
        for method, path, data, status, text in BAD:
            answer = call(client, method, path, data)
            assert answer.status_code == status, (method, path, answer.text)
            body = answer.json()
            assert text in body["error"] and body["status"] == status, (path, body)
        # the 404 of an unknown label carries the closest labels, and the command line's message
        answer = client.get("/predict", params={"head": "persn84", "relation": "term21"}).json()
        with pytest.raises(medkge.MedkgeError) as cli_error:
            model.entity_id("persn84")
        assert answer["error"] == f"head: {cli_error.value}" and answer["closest"] == ["person84", "person8", "person4"]
        assert client.get("/health").status_code == 200  # still serving


def test_a_burst_of_concurrent_requests_all_get_answers(server, model):
    good = [("tail", model.entities[i], model.relations[i % 25], 3, 1 + i % 16, i % 3 == 0) for i in range(60)]
    want = {q: expected(model, *q) for q in good}
    requests = []
    for i in range(300):
        if i % 3 == 0:  # a bad one: unknown entity, bad dim or malformed JSON
            bad = [
                ("GET", "/predict", {"head": f"nobody{i}", "relation": "term1"}, 404),
                ("GET", "/predict", {"head": "person1", "relation": "term1", "dim": 40}, 422),
                ("POST", "/predict", b"{", 400),
            ]
            requests.append(bad[i % 9 // 3])
        else:
            q = good[i % len(good)]
            params = {"head": q[1], "relation": q[2], "k": q[3], "dim": q[4], "exclude_known": str(q[5]).lower()}
            requests.append(("GET", "/predict", params, q))

    async def burst():
        limits = httpx.Limits(max_connections=300)
        async with httpx.AsyncClient(base_url=server, limits=limits, timeout=120) as client:

            async def one(method, path, data):
                if isinstance(data, bytes):
                    return await client.post(path, content=data, headers={"content-type": "application/json"})
                return await client.request(method, path, params=data)

            answers = asyncio.gather(*(one(m, p, d) for m, p, d, _ in requests), return_exceptions=True)
            await asyncio.sleep(0.05)
            health = await client.get("/health")  # answered while the burst is being scored
            return await answers, health

    answers, health = asyncio.run(burst())
    failed = [repr(a) for a in answers if isinstance(a, BaseException)]
    assert not failed, (failed[:5], server.process.log.read_text()[-3000:])  # type: ignore[attr-defined]
    assert health.status_code == 200
    for (_, _, _, outcome), answer in zip(requests, answers, strict=True):
        if isinstance(outcome, int):
            assert answer.status_code == outcome, answer.text
            assert "error" in answer.json()
        else:
            assert answer.status_code == 200, answer.text
            assert answer.json() == want[outcome]


# ---- starting and stopping -----------------------------------------------------------------------------------
def test_the_server_stops_by_itself_after_max_requests(run_path):
    process, url = start_server(str(run_path), "--max-requests", "3", "--max-seconds", "60")
    try:
        for _ in range(2):  # the readiness check was the first request
            assert httpx.get(f"{url}/health").status_code == 200
        assert process.wait(30) == 0
    finally:
        stop(process)


def test_start_up_errors_are_one_line_and_start_nothing(run_path, tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    damaged = tmp_path / "damaged"
    shutil.copytree(run_path, damaged)
    data = (damaged / "model.safetensors").read_bytes()
    (damaged / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(medkge.MedkgeError) as load_error:
        medkge.load(damaged)
    assert main(["serve", str(damaged)]) == 2
    assert capsys.readouterr().err.strip() == f"medkge: error: {load_error.value}"  # checked as medkge.load checks
    assert main(["serve", str(run_path), "--dims", "4,20"]) == 2
    assert "has no dim 20" in capsys.readouterr().err
    for port in ("70000", "-1"):  # 70000 listened on 4464 (70000 mod 65536) before it was refused
        assert main(["serve", str(run_path), "--port", port]) == 2
        assert (
            capsys.readouterr().err
            == f"medkge: error: --port must be from 1 to 65535 (or 0 for a free one), got {port}\n"
        )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", str(run_path), "--port", str(taken.getsockname()[1])]) == 2
        assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


# ---- the inference path, in process, for every model type ------------------------------------------------------
@pytest.mark.parametrize(("name", "p"), CONFIGS)
def test_slices_and_cached_copies_score_any_dim_alike(name, p):
    dataset = random_dataset(num_entities=12, num_relations=4)
    base = make_model(name, p, num_entities=12, num_relations=4)  # dims (3, 5, 8, 12), float64

    def labelled(cache_bytes: int = 256 << 20) -> LabelledModel:  # each on its own copy (PairRE: normalised in place)
        return LabelledModel(
            copy.deepcopy(base), dataset.entities, dataset.relations, dataset=dataset, cache_bytes=cache_bytes
        )

    reference = labelled()
    # slices of the full table only, and with contiguous copies of the small dims
    for model in (labelled(cache_bytes=0), labelled()):
        check_batched(model, reference, dataset)


def check_batched(model: LabelledModel, reference: LabelledModel, dataset) -> None:
    queries = [
        Query(side, a, r, k, d, x)
        for side in ("tail", "head")
        for a, r, k, d, x in [(0, 1, 5, 12, False), (3, 2, 12, 4, True), (7, 0, 3, 1, False), (11, 3, 20, 8, True)]
    ]
    got = [prediction_json(model, t) for t in model.predict(queries)]  # scored together
    for q, answer in zip(queries, got, strict=True):
        want = expected(reference, q.side, q.anchor, q.relation, q.k, q.dim, q.exclude_known)  # one at a time
        assert [r["id"] for r in answer["results"]] == [r["id"] for r in want["results"]]
        torch.testing.assert_close(
            torch.tensor([r["score"] for r in answer["results"]]), torch.tensor([r["score"] for r in want["results"]])
        )
        assert {k: v for k, v in answer.items() if k != "results"} == {k: v for k, v in want.items() if k != "results"}
    triples = dataset.test[:10].tolist()
    for d in (2, 12, 5):
        torch.testing.assert_close(
            torch.tensor(model.score_triples(triples, d).column("score")),
            torch.tensor(reference.score_triples(triples, d).column("score")),
        )


def test_a_dt_run_serves_its_trained_dims_only(tmp_path):
    run = train_tiny(tmp_path / "dt", method="dt", dims=[4, 8], epochs=1, eval_every=0)
    model = medkge.load(run.path)
    app = create_app(model)
    assert app.state.dims == [4, 8]
    with AppClient(app) as client:
        answer = client.get("/predict", params={"head": "1", "relation": "2", "ids": "true", "k": 4, "dim": 5})
        assert answer.status_code == 422 and "dim 5 is not served: the dims are 4, 8" in answer.json()["error"]
        answer = client.get("/predict", params={"head": "1", "relation": "2", "ids": "true", "k": 4, "dim": 4})
        assert answer.json() == expected(medkge.load(run.path), "tail", 1, 2, 4, 4)


def test_copies_of_small_dims_stay_within_their_memory_budget():
    dataset = random_dataset(num_entities=12, num_relations=4)
    base = make_model("rotate", num_entities=12, num_relations=4)  # float64: 224 bytes per dim of both tables
    reference = LabelledModel(copy.deepcopy(base), dataset.entities, dataset.relations)
    inference = LabelledModel(base, dataset.entities, dataset.relations, cache_bytes=7168).inference
    for d in range(1, 13):
        got = inference.scores("tail", torch.tensor([1, 2]), torch.tensor([0, 3]), d)
        want = torch.stack(
            [reference.model_for(d).score_t(torch.tensor([h]), torch.tensor([r]))[0, :, 0] for h, r in ((1, 0), (2, 3))]
        )
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert inference.cache.bytes <= 7168
    # a copy is made for dims whose copy is at most a quarter of the budget (1 to 8); copying dim 8 (1,792
    # bytes) dropped the least recently used 1, 2 and 3; the full width (12) is never copied
    assert inference.cache.dims == [4, 5, 6, 7, 8]


def test_exclude_known_without_a_dataset_is_a_client_error():
    base = make_model("rotate", num_entities=12, num_relations=4)
    model = LabelledModel(base, [f"e{i}" for i in range(12)], [f"r{i}" for i in range(4)])
    with pytest.raises(QueryError, match="exclude_known: excluding known triples needs the dataset"):
        model.query(head="e1", relation="r0", k=3, exclude_known=True)
    with AppClient(create_app(model)) as client:
        assert client.get("/models").json()["exclude_known"] is False
        answer = client.get("/predict", params={"head": "e1", "relation": "r0", "k": 3, "exclude_known": "true"})
        assert answer.status_code == 422 and "excluding known triples needs the dataset" in answer.json()["error"]
        assert answer.json()["loc"] == ["exclude_known"]
        assert client.get("/predict", params={"head": "e1", "relation": "r0", "k": 3}).json()["dim"] == 12
