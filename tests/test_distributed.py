"""Training on several processes with torchrun (gloo, 127.0.0.1): the same model as one rank, each rank holding
its rows, resumable after SIGKILL, an ordinary run folder, and a clear stop when a rank dies."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import medkge
from medkge.files import read_jsonl

OPTIONS = ["--dataset", "kinships", "--dims", "4,8", "--batch-size", "512", "--negatives", "8", "--lr", "0.05"]
OPTIONS += ["--set", "train.threads=1", "--quiet"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(ranks: int, *args: str, **popen) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={ranks}",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        "-m",
        "medkge",
        *args,
    ]


ENV = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}


def run(ranks: int, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(torchrun(ranks, *args), env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


# Every entity optimiser and every loss and sampling option, on two ranks and in one plain process
PARITY = [
    ("rotate", "adam", ["loss.subsampling=true", "train.lr_schedule=step", "model.gamma_scaling=sqrt"]),
    ("transe", "sparse_adam", ["loss.regularizer=n3", "loss.reg_weight=0.01", "train.corruption=bernoulli"]),
    ("rotate", "row_adagrad", ["train.shared_negatives=16", "eval.valid_dims=8", "eval.valid_triples=40"]),
    ("distmult", "adam", ["train.filter_negatives=true", "loss.regularizer=l2", "loss.reg_weight=0.001"]),
]


@pytest.mark.parametrize(("model", "optimizer", "sets"), PARITY)
def test_two_ranks_train_the_model_one_process_trains_and_each_holds_half_the_rows(tmp_path, model, optimizer, sets):
    options = [*OPTIONS, "--model", model, "--epochs", "2", "--eval-every", "1"]
    for item in [f"train.optimizer={optimizer}", *sets]:
        options += ["--set", item]
    from medkge.cli import main

    assert main(["train", *options, "--out", str(tmp_path / "one")]) == 0  # one process, no torchrun
    run(2, "train", *options, "--out", str(tmp_path / "two"))
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    start = medkge.Run.open(tmp_path / "two")  # an ordinary run folder
    assert start.model.entity.shape == (104, 2 if model == "rotate" else 1, 8)
    assert not torch.equal(one["entity"], torch.zeros_like(one["entity"]))
    # float rounding only: the two processes sum a batch's gradient in another order, over 34 steps
    torch.testing.assert_close(two["entity"], one["entity"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(two["relation"], one["relation"], rtol=1e-4, atol=1e-5)
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    alone = json.loads((tmp_path / "one" / "results.json").read_text())
    assert results["world_size"] == 2 and results["optimizer"] == alone["optimizer"] == optimizer
    assert results["entity_rows_by_rank"] == [[0, 52], [52, 104]]  # rank 0 holds rows 0..51, rank 1 the rest
    for split in ("valid", "test"):  # a tie broken the other way by float rounding moves an MRR a little
        for dim in ("4", "8"):
            assert results[split]["dims"][dim]["mrr"] == pytest.approx(alone[split]["dims"][dim]["mrr"], abs=1e-3)
    logged = [r["loss"] for r in read_jsonl(tmp_path / "two" / "metrics.jsonl") if r["type"] == "epoch"]
    expected = [r["loss"] for r in read_jsonl(tmp_path / "one" / "metrics.jsonl") if r["type"] == "epoch"]
    assert logged == pytest.approx(expected, rel=1e-5)
    validated = [
        [sorted(r["dims"]) for r in read_jsonl(tmp_path / f / "metrics.jsonl") if r["type"] == "valid"]
        for f in ("one", "two")
    ]
    assert validated[0] == validated[1] == [["8"] if "eval.valid_dims=8" in sets else ["4", "8"]] * 2
    total = len(medkge.load_dataset("kinships").valid)  # every rank validates the same triples of a subset
    expected = f"full, 40 of {total:,} triples (seed 0)" if "eval.valid_triples=40" in sets else "full"
    assert results["valid"]["protocol"] == alone["valid"]["protocol"] == expected


@pytest.mark.parametrize("sets", [[], ["train.optimizer=row_adagrad", "train.shared_negatives=16"]])
def test_a_two_rank_run_killed_with_sigkill_resumes_to_where_an_uninterrupted_one_ends(tmp_path, sets):
    options = [*OPTIONS, "--epochs", "5", "--eval-every", "2", "--set", "train.checkpoint_every=1"]
    for item in sets:
        options += ["--set", item]
    run(2, "train", *options, "--out", str(tmp_path / "reference"))
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        torchrun(2, "train", *options, "--out", str(killed)),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    log = killed / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        epochs = [r for r in read_jsonl(log) if r["type"] == "epoch"] if log.exists() else []
        if len(epochs) >= 2:
            break
        time.sleep(0.05)
    time.sleep(epochs[-1]["seconds"] / 2)
    kill_tree(proc.pid)  # torchrun and both ranks at once (torchrun starts each rank in a session of its own)
    proc.wait()
    assert not (killed / "results.json").exists(), "the run finished before it was killed"
    shutil.copytree(killed, tmp_path / "on-one-rank")
    shutil.copytree(killed, tmp_path / "in-one-process")
    run(2, "train", "--resume", str(killed), "--quiet")
    a, b = load_file(tmp_path / "reference" / "model.safetensors"), load_file(killed / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-7)

    def strip(records):
        return [{k: v for k, v in r.items() if k not in ("seconds", "triples_per_s")} for r in records]

    assert strip(read_jsonl(killed / "metrics.jsonl")) == strip(read_jsonl(tmp_path / "reference" / "metrics.jsonl"))
    # the shards are row ranges: the same checkpoint resumes on another number of ranks, to float rounding
    run(1, "train", "--resume", str(tmp_path / "on-one-rank"), "--quiet")
    c = load_file(tmp_path / "on-one-rank" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(c[key], a[key], rtol=1e-4, atol=1e-5)
    # and in one plain process, whose checkpoints keep the rows in the checkpoint file itself
    from medkge.cli import main

    assert main(["train", "--resume", str(tmp_path / "in-one-process"), "--quiet"]) == 0
    d = load_file(tmp_path / "in-one-process" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(d[key], a[key], rtol=1e-4, atol=1e-5)


def test_a_two_rank_run_folder_evaluates_in_one_process_to_the_recorded_metrics(tmp_path):
    run(2, "train", *OPTIONS, "--epochs", "2", "--eval-every", "1", "--out", str(tmp_path / "run"))
    opened = medkge.Run.open(tmp_path / "run")
    for split in ("valid", "test"):
        recorded, now = opened.metrics(split), opened.evaluate(split, progress=False)
        for d in (4, 8):
            for key in ("mrr", "mr", "hits@1", "hits@10"):
                assert now[d][key] == pytest.approx(recorded[d][key], rel=1e-9, abs=1e-12)
    sampled = ["--set", "eval.protocol=sampled", "--set", "eval.sampled_candidates=20"]
    run(2, "train", *OPTIONS, "--epochs", "1", "--eval-every", "1", *sampled, "--out", str(tmp_path / "sampled"))
    opened = medkge.Run.open(tmp_path / "sampled")
    recorded, now = opened.metrics("test"), opened.evaluate("test", progress=False)
    assert recorded.protocol == now.protocol == "sampled (20 candidates per side, seed 0)"
    assert now[8]["mrr"] == pytest.approx(recorded[8]["mrr"], rel=1e-9)


def test_a_rank_that_dies_stops_the_others_with_one_line_naming_it(tmp_path):
    options = [*OPTIONS, "--epochs", "400", "--eval-every", "0", "--batch-size", "64"]
    proc = subprocess.Popen(
        torchrun(2, "train", *options, "--out", str(tmp_path / "run")),
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        log = tmp_path / "run" / "metrics.jsonl"
        deadline = time.time() + 240
        while time.time() < deadline and not (log.exists() and log.stat().st_size):
            time.sleep(0.1)
        workers = _children(proc.pid)
        assert len(workers) == 2
        ranks = {int(_environ(pid).get("RANK", -1)): pid for pid in workers}
        os.kill(ranks[1], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
    lines = [line for line in err.splitlines() if line.startswith("medkge: error:")]
    assert lines and "rank 1 " in lines[0] and "rank 0 stops too" in lines[0], err[-2000:]


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants, the children first found, then all at once."""
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(_children(p))
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    for p in tree[1:]:  # wait until the ranks are gone (they are not our children)
        deadline = time.time() + 30
        while Path(f"/proc/{p}").exists() and time.time() < deadline:
            if Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.05)


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_a_script_calling_train_under_torchrun_trains_one_model_together(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(
        "import sys, medkge\n"
        "run = medkge.train(dataset='kinships', dims=[4, 8], epochs=1, batch_size=512, negatives=8, eval_every=0,\n"
        f"                  out={str(tmp_path / 'run')!r}, progress=False, **{{'train.threads': 1}})\n"
        "import os, pathlib\n"
        f"pathlib.Path({str(tmp_path)!r}, 'result-' + os.environ['RANK']).write_text(type(run).__name__)\n"
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1"]
    done = subprocess.run(
        [*command, f"--master-port={free_port()}", str(script)], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # each rank writes its own file: two ranks printing to one pipe can interleave their lines
    assert [(tmp_path / f"result-{rank}").read_text() for rank in (0, 1)] == ["Run", "NoneType"]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["world_size"] == 2


def test_a_method_that_trains_one_model_per_dim_is_refused_under_torchrun_at_once(tmp_path):
    done = subprocess.run(
        torchrun(2, "train", *OPTIONS, "--method", "dt", "--epochs", "1", "--out", str(tmp_path / "run")),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and "method dt trains one model per dim, in one process" in done.stderr
    assert not (tmp_path / "run").exists()
    for options, message in [
        (["--dataset", "countries_s1"], "countries_s1 ranks tails among its own candidate set"),
        (["--set", "med.evolutionary=true"], "med.evolutionary's positive weights are a softmax over the whole batch"),
    ]:
        command = torchrun(2, "train", *OPTIONS, *options, "--epochs", "1", "--out", str(tmp_path / "other"))
        done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
        assert done.returncode != 0 and message in done.stderr
        assert not (tmp_path / "other").exists()


def test_closing_the_cluster_stops_its_heartbeat_before_the_process_group_goes(monkeypatch):
    # A heartbeat thread still running at interpreter exit aborted a rank after a run that had succeeded
    # ("terminate called without an active exception", exit code -6): close() must join it first.
    from medkge.distributed import Cluster

    environ = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "WORLD_SIZE": "1"}
    for key, value in {**environ, "GLOO_SOCKET_IFNAME": "lo"}.items():
        monkeypatch.setenv(key, value)
    cluster = Cluster(torch.device("cpu"), timeout_s=60)
    try:
        assert cluster._beater.is_alive()
    finally:
        cluster.close()
    assert not cluster._beater.is_alive()
    assert not torch.distributed.is_initialized()
