"""Fault injection: what the file system, a second writer or a hostile file can do to a command, and the one
line it gets instead of a traceback or a silently wrong result (issue 32). Each test failed before its fix.

Read-only folders are made by permissions and, as root (whom permissions do not stop), by refusing the writes
themselves; a full disk is a patched ``fsync`` (or safetensors' writer) raising ENOSPC.
"""

from __future__ import annotations

import builtins
import errno
import gzip
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import medkge
from medkge import MedkgeError, load_dataset
from medkge.cli import main
from medkge.files import lock_folder
from medkge.layout import LOCK_FILE

from .conftest import train_tiny
from .test_robustness import interrupted_run, write_splits

FULL = "No space left on device"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny run (Nations, dims 4 and 8, one epoch)."""
    out = tmp_path_factory.mktemp("faults") / "run"
    train_tiny(out, dims=[4, 8], epochs=1, **{"train.threads": 1})
    return out


def writer(command: str, finished: Path) -> list[str]:
    """A command that writes a folder (its --out still to give)."""
    return {
        "train": ["train", "--dataset", "nations", "--dims", "4", "--epochs", "1", "--quiet"],
        "crop": ["crop", str(finished), "--dim", "4"],
        "export": ["export", str(finished), "--format", "npy"],
    }[command]


def error_line(code: int, err: str, *fragments: str) -> str:
    """The one ``medkge: error:`` line of a failed command, checked: exit 2, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("medkge: error: ")]
    assert len(errors) == 1, err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def _under(path, folder: Path) -> bool:
    try:
        return Path(os.path.abspath(os.fsdecode(path))).is_relative_to(folder)
    except TypeError:  # a file descriptor
        return False


def read_only(monkeypatch, folder: Path) -> None:
    """Make ``folder`` (and what it holds) read-only for the rest of the test."""
    folder = Path(folder).resolve()
    for p in [folder, *folder.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    if os.geteuid() != 0:
        return

    def refuse(path):
        raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))

    def guard(original, writes):
        def patched(path, *args, **kwargs):
            if writes(args, kwargs) and _under(path, folder):
                refuse(path)
            return original(path, *args, **kwargs)

        return patched

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    open_writes = lambda a, k: any(c in (a[0] if a else k.get("mode", "r")) for c in "wax+")  # noqa: E731
    monkeypatch.setattr(os, "open", guard(os.open, lambda a, k: bool((a[0] if a else k["flags"]) & write_flags)))
    monkeypatch.setattr(builtins, "open", guard(builtins.open, open_writes))
    monkeypatch.setattr(io, "open", guard(io.open, open_writes))
    for name in ("mkdir", "rmdir", "unlink", "remove"):
        monkeypatch.setattr(os, name, guard(getattr(os, name), lambda a, k: True))
    for name in ("replace", "rename"):
        original = getattr(os, name)

        def moved(src, dst, *args, _original=original, **kwargs):
            if _under(src, folder) or _under(dst, folder):
                refuse(dst)
            return _original(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, name, moved)


@pytest.fixture
def restore_permissions(tmp_path):
    """Give tmp_path's files back their write permission at the end (pytest must remove them)."""
    yield
    for p in [tmp_path, *tmp_path.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o200)


def disk_full(monkeypatch, folder: Path, after: int = 0) -> None:
    """The disk under ``folder`` fills up: the fsync of a file written there fails with ENOSPC, after
    ``after`` of them succeeded."""
    folder, original, done = Path(folder).resolve(), os.fsync, []

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.isfile(path) and _under(path, folder):
            if len(done) >= after:
                raise OSError(errno.ENOSPC, FULL)
            done.append(path)
        return original(fd)

    monkeypatch.setattr(os, "fsync", fsync)


# ---- a read-only folder, a regular file where a folder belongs ----------------------------------


@pytest.mark.usefixtures("restore_permissions")
def test_resuming_a_read_only_run_folder_is_one_line_and_changes_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupted_run(out, monkeypatch, stop_at=2)
    before = snapshot(out)
    read_only(monkeypatch, out)
    code = main(["train", "--resume", str(out), "--quiet"])
    error_line(code, capsys.readouterr().err, str(out), "Permission denied")
    assert snapshot(out) == before


@pytest.mark.usefixtures("restore_permissions")
@pytest.mark.parametrize("command", ["train", "crop", "export"])
def test_writing_into_a_read_only_folder_is_one_line(finished, tmp_path, monkeypatch, capsys, command):
    parent = tmp_path / "ro"
    parent.mkdir()
    read_only(monkeypatch, parent)
    out = parent / "new"
    code = main([*writer(command, finished), "--out", str(out)])
    error_line(code, capsys.readouterr().err, str(out), "Permission denied")
    assert not out.exists()


@pytest.mark.parametrize("command", ["train", "crop", "export"])
@pytest.mark.parametrize("under", [False, True])
def test_an_out_that_is_a_regular_file_or_under_one_is_one_line(finished, tmp_path, capsys, command, under):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine\n")
    out = blocker / "run" if under else blocker
    code = main([*writer(command, finished), "--out", str(out)])
    line = error_line(code, capsys.readouterr().err, str(out))
    assert "is not a folder" in line
    assert blocker.read_text() == "mine\n"


def test_a_folder_another_process_makes_at_the_same_time_is_no_error(tmp_path, monkeypatch):
    from medkge.files import make_folder

    shard = tmp_path / "checkpoint.rows" / "step-1"
    real = Path.is_dir
    seen = []

    def is_dir(self):  # the other rank makes the folder between this process's two looks at it
        if self == shard and not seen:
            seen.append(self)
            shard.mkdir(parents=True)
            return False
        return real(self)

    monkeypatch.setattr(Path, "is_dir", is_dir)
    assert make_folder(shard) == [] and shard.is_dir()


def test_any_other_os_error_is_one_line_naming_the_file(finished, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", "somewhere/else")

    monkeypatch.setattr(medkge.run, "read_vocab", fail)
    error_line(main(["info", str(finished)]), capsys.readouterr().err, "somewhere/else: Permission denied")


@pytest.mark.usefixtures("restore_permissions")
def test_a_read_only_data_folder_loads_without_its_cache_with_a_warning(tmp_path, monkeypatch):
    from medkge.errors import MedkgeWarning

    folder = write_splits(tmp_path / "kg", {"train": b"a\tr\tb\n", "valid": b"a\tr\tb\n", "test": b"b\tr\ta\n"})
    read_only(monkeypatch, folder)
    with pytest.warns(MedkgeWarning, match=r"\.medkge-cache: cannot write the dataset cache \(.*Permission denied"):
        assert load_dataset(folder, cache=True).entities == ["a", "b"]


# ---- a full disk --------------------------------------------------------------------------------


def test_a_failed_start_leaves_no_folder(tmp_path, monkeypatch, capsys):
    out = tmp_path / "parent" / "run"
    disk_full(monkeypatch, tmp_path)
    code = main(["train", "--dataset", "nations", "--dims", "4", "--epochs", "1", "--out", str(out), "--quiet"])
    error_line(code, capsys.readouterr().err, f"{out / 'entities.tsv'}: cannot write ({FULL})")
    assert not (tmp_path / "parent").exists()
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_resuming_keeps_the_checkpoint_and_the_run_finishes_later(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupted_run(out, monkeypatch, stop_at=3)
    before = snapshot(out)
    with monkeypatch.context() as m:
        disk_full(m, out)
        error_line(main(["train", "--resume", str(out), "--quiet"]), capsys.readouterr().err, FULL)
    assert snapshot(out) == before  # no temporary file, no torn log line, the checkpoint of epoch 2
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert (out / "results.json").is_file() and not (out / LOCK_FILE).exists()


def test_a_full_disk_in_safetensors_writer_is_one_line_and_the_run_can_be_resumed(tmp_path, monkeypatch, capsys):
    from safetensors import SafetensorError

    calls, real = [], medkge.files.save_file

    def save_file(*args, **kwargs):  # the first checkpoint is written, the one after epoch 1 is not
        calls.append(1)
        if len(calls) > 1:
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")
        return real(*args, **kwargs)

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(medkge.files, "save_file", save_file)
        code = main(["train", "--dataset", "nations", "--dims", "4", "--epochs", "2", "--out", str(out), "--quiet"])
        error_line(code, capsys.readouterr().err, "checkpoint.safetensors: cannot write (Error while serializing")
    assert not [f for f in out.iterdir() if f.name.endswith(".tmp")]
    assert main(["train", "--resume", str(out), "--quiet"]) == 0


@pytest.mark.parametrize("command", ["crop", "export"])
def test_a_partial_crop_or_export_does_not_block_its_retry(finished, tmp_path, monkeypatch, capsys, command):
    out = tmp_path / "out"
    out.mkdir()  # the user made it: it stays, empty
    args = writer(command, finished)
    with monkeypatch.context() as m:
        disk_full(m, out, after=1)  # the first file is written, the second fails
        error_line(main([*args, "--out", str(out)]), capsys.readouterr().err, FULL)
    assert list(out.iterdir()) == []
    assert main([*args, "--out", str(out)]) == 0  # no --force needed
    assert (out / "model.json").is_file() and not (out / LOCK_FILE).exists()


def test_a_torn_last_log_line_is_skipped_and_a_failed_append_leaves_none(tmp_path, monkeypatch):
    from medkge.files import append_jsonl, read_jsonl

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert list(read_jsonl(log)) == [{"epoch": 1}, {"epoch": 2}]
    log.write_text('{"epoch": 1}\n{"epo\n{"epoch": 3}\n')
    with pytest.raises(MedkgeError, match=r"metrics\.jsonl:2: not a JSON record"):
        list(read_jsonl(log))

    class Full(io.FileIO):  # the disk fills up in the middle of the line
        def write(self, data):
            if getattr(self, "wrote", False):
                raise OSError(errno.ENOSPC, FULL)
            self.wrote = True
            return super().write(bytes(data)[: len(data) // 2])

    log.write_text('{"epoch": 1}\n')
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda p, mode="r", **k: Full(p, "a") if mode == "ab" else real_open(p, mode))
    with pytest.raises(MedkgeError, match=f"metrics.jsonl: cannot write \\({FULL}\\)"):
        append_jsonl(log, {"epoch": 2, "padding": "x" * 100})
    monkeypatch.undo()
    assert log.read_text() == '{"epoch": 1}\n'


# ---- two writers --------------------------------------------------------------------------------


def test_a_second_writer_into_a_folder_in_use_gets_one_line_naming_the_holder(finished, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupted_run(out, monkeypatch, stop_at=2)
    env = os.environ | {"PYTHONPATH": str(Path(medkge.__file__).parents[1])}
    hold = f"from medkge.files import lock_folder\nwith lock_folder({str(out)!r}, 'medkge train'):\n"
    hold += "    print('held', flush=True)\n    import sys; sys.stdin.read()\n"
    holder = subprocess.Popen([sys.executable, "-c", hold], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        holder_says = f"in use by `medkge train` (pid {holder.pid} on {socket.gethostname()})"
        for args in (
            ["train", "--dataset", "nations", "--dims", "4", "--epochs", "1", "--out", str(out), "--quiet"],
            ["train", "--resume", str(out), "--quiet"],
            ["crop", str(finished), "--dim", "4", "--out", str(out), "--force"],
            ["export", str(finished), "--format", "npy", "--out", str(out), "--force"],
        ):
            error_line(main(args), capsys.readouterr().err, str(out), holder_says)
    finally:
        holder.communicate(b"", timeout=60)
    assert holder.returncode == 0 and not (out / LOCK_FILE).exists()
    assert main(["train", "--resume", str(out), "--quiet"]) == 0  # the folder is free again


def test_the_lock_of_a_killed_writer_is_free(tmp_path):
    out = tmp_path / "run"
    env = os.environ | {"PYTHONPATH": str(Path(medkge.__file__).parents[1])}
    hold = f"from medkge.files import lock_folder\nwith lock_folder({str(out)!r}, 'medkge export'):\n"
    hold += "    print('held', flush=True)\n    import time; time.sleep(60)\n"
    holder = subprocess.Popen([sys.executable, "-c", hold], env=env, stdout=subprocess.PIPE)
    assert holder.stdout.readline() == b"held\n"
    holder.kill()  # SIGKILL: no clean-up, the lock file stays
    holder.wait(timeout=60)
    assert (out / LOCK_FILE).exists()
    with lock_folder(out, "medkge crop"):
        assert json.loads((out / LOCK_FILE).read_text())["command"] == "medkge crop"
    assert not (out / LOCK_FILE).exists()


def test_a_lock_is_one_writer_at_a_time_even_within_a_process_and_leaves_nothing(tmp_path):
    out = tmp_path / "new" / "run"
    with lock_folder(out, "medkge export"):
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(MedkgeError, match=r"in use by `medkge export`"), lock_folder(out, "medkge crop"):
            pass
    assert not (tmp_path / "new").exists()  # made for the lock and left empty: removed


# ---- hostile files ------------------------------------------------------------------------------


def test_a_corrupted_gzip_split_is_one_line_naming_the_file(tmp_path, capsys):
    data = bytearray(gzip.compress(b"a\tr\tb\nb\tr\tc\n" * 50))
    data[10] |= 0b110  # the first deflate block's type: 3, which does not exist
    folder = write_splits(tmp_path / "kg", {"valid": b"a\tr\tc\n", "test": b"b\tr\ta\n"})
    (folder / "train.txt.gz").write_bytes(bytes(data))
    with pytest.raises(MedkgeError, match=r"train\.txt\.gz: not a valid gzip file"):
        load_dataset(folder)
    code = main(["train", "--dataset", str(folder), "--out", str(tmp_path / "run"), "--quiet"])
    error_line(code, capsys.readouterr().err, "train.txt.gz: not a valid gzip file")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("suffix", "sep"), [(".txt", b"\t"), (".txt.gz", b" ")])  # the fast and the line reader
def test_an_absurdly_long_line_is_refused_before_the_file_is_read_whole(tmp_path, monkeypatch, suffix, sep):
    import medkge.datasets as datasets

    monkeypatch.setattr(datasets, "MAX_LINE", 1000)
    rows = [b"a r b", b"x" * 2000 + b" r c", b"c s a"]
    train = b"\n".join(row.replace(b" ", sep) for row in rows) + b"\n"
    folder = write_splits(tmp_path / "kg", {"train": train, "valid": b"a\tr\tc\n", "test": b"b\tr\ta\n"}, suffix)

    def read_whole(path):
        raise AssertionError(f"{path} read whole")

    monkeypatch.setattr(datasets, "_read_text", read_whole)
    with pytest.raises(MedkgeError, match=rf"train{suffix}:2: a line longer than 1,000 bytes"):
        load_dataset(folder)


def test_duplicate_yaml_keys_are_refused_with_file_and_line(tmp_path, capsys):
    config = tmp_path / "twice.yaml"  # (were it read, it would train for a second: epochs 1 of the first train)
    config.write_text("dataset: nations\ntrain:\n  epochs: 1\nmodel:\n  dims: [4]\ntrain:\n  epochs: 1\n")
    code = main(["train", str(config), "--out", str(tmp_path / "run"), "--quiet"])
    error_line(code, capsys.readouterr().err, f"{config}:6:1:", "'train' is given twice (first on line 2)")
    config.write_text("train:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n")
    with pytest.raises(MedkgeError, match=r"twice\.yaml:4:3: .*'lr' is given twice \(first on line 2\)"):
        medkge.Config.from_yaml(config)
    assert not (tmp_path / "run").exists()


def test_a_yaml_alias_bomb_is_refused_at_its_first_alias(tmp_path, capsys):
    levels = ["&a [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for name, previous in zip("bcde", "abcd", strict=True):  # 9^6 items once expanded (the issue's: 9^9)
        levels.append(f"&{name} [{', '.join([f'*{previous}'] * 9)}]")
    levels.append(f"[{', '.join(['*e'] * 9)}]")
    config = tmp_path / "bomb.yaml"
    config.write_text("dataset: nations\nmodel:\n  dims: [" + ", ".join(levels) + "]\n")
    code = main(["train", str(config), "--out", str(tmp_path / "run")])
    line = error_line(code, capsys.readouterr().err, f"{config}:3:", "an alias (*a): configs take no aliases")
    assert len(line) < 300 and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "model.name=" + "x" * 100_000],
        ["--set", "train." + "y" * 100_000 + "=1"],
        ["--dims", "1," + "z" * 100_000],
        ["--set", "model.dims=[" + "5, " * 5_000 + "4]"],
    ],
)
def test_a_huge_value_is_echoed_in_an_error_only_in_part(tmp_path, capsys, args):
    code = main(["train", "--dataset", "nations", *args, "--out", str(tmp_path / "run")])
    assert len(error_line(code, capsys.readouterr().err)) < 300


def test_absurd_dims_are_refused_from_their_arithmetic(tmp_path, capsys):
    from medkge.cli import _parse_dims
    from medkge.config import MAX_DIMS, MAX_WIDTH

    with pytest.raises(MedkgeError, match="--dims: 10,000 sub-models; at most 4,096"):
        _parse_dims("1:10000:1")
    with pytest.raises(MedkgeError, match="--dims: 100,000,000 sub-models; at most 4,096"):
        _parse_dims("1:100000000:1")  # a list of 10^8 ints took 31 s and 5.8 GB before it was refused
    with pytest.raises(MedkgeError, match="--dims: the step of '1:10:0' must be positive"):
        _parse_dims("1:10:0")
    assert _parse_dims(f"1:{MAX_DIMS}:1")[-1] == MAX_DIMS and _parse_dims(f"8,{MAX_WIDTH}") == [8, MAX_WIDTH]
    code = main(["train", "--dataset", "nations", "--dims", f"8,{MAX_WIDTH + 1}", "--out", str(tmp_path / "run")])
    error_line(code, capsys.readouterr().err, "model.dims: a dim of 65,537; at most 65,536")
    assert main(["config"]) == 0 and "at most 4,096 of them and the widest at most 65,536" in capsys.readouterr().out
    with pytest.raises(MedkgeError, match="99,999,999 sub-models; at most 4,096"):  # the Python API's range too
        medkge.train(dataset="nations", dims=range(1, 10**8), out=tmp_path / "api")
    assert not (tmp_path / "api").exists()


# ---- machine limits -----------------------------------------------------------------------------


def test_more_threads_than_cores_are_cut_to_the_cores_with_a_warning(tmp_path, monkeypatch, capsys):
    from medkge.runtime import cores

    asked = []
    monkeypatch.setattr(torch, "set_num_threads", asked.append)  # 100,000 OpenMP threads crashed the process
    out = tmp_path / "run"
    args = ["--dims", "4", "--epochs", "1", "--set", "train.threads=100000", "--set", "eval.test=false"]
    assert main(["train", "--dataset", "nations", *args, "--out", str(out), "--quiet"]) == 0
    assert asked == [cores()]
    assert (
        f"train.threads 100,000 is more than the {cores()} CPU cores here: using {cores()}" in capsys.readouterr().err
    )


def test_evaluate_on_a_device_that_is_not_there_is_the_one_line_train_gives(finished, capsys):
    assert main(["evaluate", str(finished), "--device", "auto", "--quiet"]) == 0
    if not torch.cuda.is_available():
        code = main(["evaluate", str(finished), "--device", "cuda", "--quiet"])
        error_line(code, capsys.readouterr().err, "--device: cuda asked for but no CUDA device is available")
    error_line(main(["evaluate", str(finished), "--device", "tpu"]), capsys.readouterr().err, "--device: unknown")


# ---- what changes answers is checksummed; a run counts once ------------------------------------


def _swap_two_labels(path: Path) -> None:
    lines = path.read_text().splitlines()
    (i, a), (j, b) = (line.split("\t") for line in lines[:2])
    path.write_text("\n".join([f"{i}\t{b}", f"{j}\t{a}", *lines[2:]]) + "\n")


def test_swapped_labels_in_a_run_or_a_cropped_folder_are_caught_by_the_checksums(finished, tmp_path, capsys):
    assert {"entities.tsv", "relations.tsv"} <= set(json.loads((finished / "results.json").read_text())["checksums"])
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    _swap_two_labels(run / "entities.tsv")
    code = main(["predict", str(run), "--head", "usa", "--relation", "accusation"])
    error_line(code, capsys.readouterr().err, "entities.tsv: does not match the checksum in results.json")
    assert main(["crop", str(finished), "--dim", "4", "--out", str(tmp_path / "c4")]) == 0
    _swap_two_labels(tmp_path / "c4" / "relations.tsv")
    with pytest.raises(MedkgeError, match=r"relations\.tsv: does not match the checksum in model\.json"):
        medkge.load(tmp_path / "c4")


def test_compare_refuses_a_run_given_twice_or_a_copy_of_it(finished, tmp_path, capsys):
    error_line(main(["compare", str(finished), str(finished)]), capsys.readouterr().err, "is given twice")
    shutil.copytree(finished, tmp_path / "copy")
    code = main(["compare", str(finished), str(tmp_path / "copy")])
    error_line(code, capsys.readouterr().err, "have the same config and seed (0)")
    assert main(["compare", str(finished), str(tmp_path / "copy"), "--labels", "original,copy"]) == 0
