"""What a new user runs into: byte order marks, failed starts and their retry, unseen relations, lost
checkpoints, nonsense values, and the small messages (issue 15). Each test fails without its fix."""

from __future__ import annotations

import gzip
import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import medkge
from medkge import MedkgeError, load_dataset
from medkge.cli import main
from medkge.datasets import warn_unseen
from medkge.errors import MedkgeWarning
from medkge.files import read_jsonl, write_vocab

from .conftest import train_tiny

BOM = b"\xef\xbb\xbf"


def write_splits(folder, splits: dict[str, bytes], suffix=".txt"):
    folder.mkdir(parents=True, exist_ok=True)
    for split, data in splits.items():
        (folder / f"{split}{suffix}").write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    return folder


def graph(bom: bytes = b"", sep: bytes = b"\t") -> dict[str, bytes]:
    rows = {"train": [b"a r b", b"b r c", b"c s a"], "valid": [b"b r a"], "test": [b"c r b"]}
    return {split: bom + b"\n".join(line.replace(b" ", sep) for line in lines) + b"\n" for split, lines in rows.items()}


@pytest.mark.parametrize("suffix", [".txt", ".txt.gz"])
@pytest.mark.parametrize("sep", [b"\t", b" "])  # tabs: the fast reader; spaces: the line-by-line reader
def test_a_byte_order_mark_adds_no_phantom_entity(tmp_path, suffix, sep):
    plain = load_dataset(write_splits(tmp_path / "plain", graph(sep=sep), suffix))
    marked = load_dataset(write_splits(tmp_path / "bom", graph(BOM, sep), suffix))
    assert marked.entities == plain.entities == ["a", "b", "c"]
    assert marked.relations == ["r", "s"]
    assert torch.equal(marked.train, plain.train) and torch.equal(marked.test, plain.test)


def test_a_failed_start_leaves_no_folder_and_a_killed_start_can_be_started_again(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "nations", "--out", str(out), "--set", "train.device=cuda:99", "--quiet"])
    assert code == 2 and "train.device" in capsys.readouterr().err
    assert not out.exists()  # the device was checked before the folder was made
    # a start killed before its first checkpoint leaves a config and vocabularies only
    nations = load_dataset("nations")
    out.mkdir()
    write_vocab(out / "entities.tsv", nations.entities)
    write_vocab(out / "relations.tsv", nations.relations)
    cfg = medkge.Config().with_overrides({"dataset": "nations", "train.device": "cuda:99"})
    (out / "config.yaml").write_text(cfg.to_yaml())
    code = main(["train", "--resume", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "never reached its first checkpoint" in err and f"--out {out}" in err
    run = train_tiny(out, dims=[4], epochs=1)  # the same folder, started again with other options
    assert run.config.train.device == "cpu" and run.results()["epochs"] == 1
    with pytest.raises(MedkgeError, match="already holds a run"):
        train_tiny(out, dims=[4], epochs=1)


def test_unseen_relations_are_counted_in_a_warning_and_dropped_on_request(tmp_path, capsys):
    splits = graph()
    splits["test"] += b"a\tonly_in_test\tc\nd\tr\ta\n"  # an unseen relation, an unseen entity
    folder = write_splits(tmp_path / "kg", splits)
    ds = load_dataset(folder)
    assert ds.unseen() == {"entities": 1, "relations": 1, "triples": {"valid": 0, "test": 2}}
    dropped = load_dataset(folder, drop_unseen=True)
    assert len(dropped.test) == 1 and dropped.relations == ds.relations
    with pytest.warns(MedkgeWarning, match=r"1 entity and 1 relation occur only in valid/test \(2 test triples\)"):
        train_tiny(tmp_path / "kept", dataset=str(folder), dims=[4], epochs=1, batch_size=2)
    options = ["--dims", "4", "--epochs", "1", "--drop-unseen", "--quiet"]
    code = main(["train", "--dataset", str(folder), *options, "--out", str(tmp_path / "dropped")])
    err = capsys.readouterr().err
    assert code == 0 and "warning" not in err
    run = medkge.Run.open(tmp_path / "dropped")
    assert run.config.drop_unseen and run.metrics("test")[4]["queries"] == 2  # one test triple, two directions


def interrupted_run(out, monkeypatch, stop_at: int, epochs: int = 3):
    """A run of ``epochs`` epochs stopped (as by a crash) when epoch ``stop_at`` begins."""
    from medkge.training import Trainer

    original = Trainer.train_epoch

    def train_epoch(self, epoch):
        if epoch == stop_at:
            raise RuntimeError("crash")
        return original(self, epoch)

    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_epoch", train_epoch)
        with pytest.raises(RuntimeError, match="crash"):
            train_tiny(out, dims=[4], epochs=epochs, eval_every=1, **{"train.checkpoint_every": 1})


def test_resuming_says_from_which_epoch(tmp_path, monkeypatch, capsys):
    interrupted_run(tmp_path / "run", monkeypatch, stop_at=2)
    capsys.readouterr()
    medkge.resume(tmp_path / "run", progress=True)
    assert "medkge: resuming from epoch 2 (checkpoint of epoch 1)" in capsys.readouterr().err


def test_a_deleted_checkpoint_restarts_with_a_warning_and_a_consistent_log(tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupted_run(out, monkeypatch, stop_at=3)
    seconds = sum(r["seconds"] for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "epoch")
    (out / "checkpoint.safetensors").unlink()
    with pytest.warns(
        MedkgeWarning, match=r"no checkpoint: starting from epoch 1 \(an earlier attempt reached epoch 2"
    ):
        run = medkge.resume(out, progress=False)
    records = list(read_jsonl(out / "metrics.jsonl"))
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [1, 2, 3]  # no duplicated epochs
    assert [r["type"] for r in records].count("restart") == 1
    assert run.results()["discarded_seconds"] == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "0"], "train.lr must be greater than 0"),
        (["--gamma", "-1"], "model.gamma must be positive for rotate"),
        (["--set", "model.init_scale=0"], "model.init_scale must be greater than 0"),
    ],
)
def test_nonsense_values_are_refused_naming_the_key(tmp_path, capsys, args, message):
    code = main(["train", "--dataset", "nations", "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and not (tmp_path / "run").exists()


def test_a_margin_is_not_asked_of_a_bilinear_model():
    assert medkge.Config().with_overrides({"model.name": "distmult", "model.gamma": -1}).model.gamma == -1


def test_small_messages(tmp_path, capsys):
    run = train_tiny(tmp_path / "run", dims=[4, 8], epochs=1)
    assert main(["evaluate", str(run.path), "--dims", "abc"]) == 2
    assert "medkge: error: --dims: cannot read 'abc' as dims" in capsys.readouterr().err
    assert main(["info", str(run.path)]) == 0
    seconds = next(line for line in capsys.readouterr().out.splitlines() if "train_seconds" in line)
    assert len(seconds.split(":")[1].strip().split(".")[1]) == 1  # one decimal
    with pytest.raises(MedkgeError, match=r"unknown key 'trian'; closest: 'train'$"):
        medkge.Config.from_dict({"trian": {"lr": 0.1}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 0.1\n   epochs: 3\n")
    with pytest.raises(MedkgeError, match=r"bad.yaml:3:\d+: not valid YAML"):
        medkge.Config.from_yaml(bad)


def test_a_run_folder_model_file_is_checked_against_its_recorded_checksum(tmp_path):
    run = train_tiny(tmp_path / "run", dims=[4], epochs=1)
    assert set(run.results()["checksums"]) == {"model.safetensors", "entities.tsv", "relations.tsv"}
    path = run.path / "model.safetensors"
    tables = load_file(path)
    tables["entity"][0, 0, 0] += 1.0  # same header and size, other values
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little") + 8
    save_file(tables, tmp_path / "changed.safetensors")
    changed = (tmp_path / "changed.safetensors").read_bytes()
    path.write_bytes(data[:header] + changed[int.from_bytes(changed[:8], "little") + 8 :])
    with pytest.raises(MedkgeError, match=r"does not match the checksum in results\.json"):
        medkge.Run.open(run.path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        medkge.load_dataset("nations")  # loading alone warns about nothing


# ---- the first hour of a new user (issue 32) ----------------------------------------------------


def test_a_warning_counts_only_what_is_unseen_in_good_english(tmp_path):
    splits = graph()
    splits["test"] += b"a\tonly_in_test\tc\n"  # one unseen relation, no unseen entity
    ds = load_dataset(write_splits(tmp_path / "kg", splits))
    with pytest.warns(MedkgeWarning) as caught:
        warn_unseen(ds)
    message = str(caught[0].message)
    assert "kg: 1 relation occurs only in valid/test (1 test triple); they are kept" in message
    assert "0 entities" not in message


def test_select_takes_quiet_as_the_other_commands_do(tmp_path, capsys):
    run = train_tiny(tmp_path / "run", dims=[2, 4], epochs=1)
    assert main(["select", str(run.path), "--min-mrr", "0", "--dims", "2,3,4", "--quiet", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["dim"] == 2 and "evaluate" not in err  # no progress bar


def test_the_hint_for_tails_outside_the_candidates_does_not_suggest_the_relation_given(tmp_path, capsys):
    run = train_tiny(tmp_path / "run", dims=[4], epochs=1)
    items = tmp_path / "items.txt"
    items.write_text("usa\n")
    code = main(["evaluate", str(run.path), "--candidates", str(items), "--relation", "accusation", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "have a tail that is not a candidate" in err
    assert "--relation R" not in err and "add those tails to the candidates" in err
    assert "(--candidates tails:accusation)" in err
