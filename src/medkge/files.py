"""Files: atomic writes, safetensors model and checkpoint files, vocabularies, JSON logs.

What a run folder and a cropped model folder hold is documented once, in docs/formats.md.

A model file is safetensors: the tables ``entity`` and ``relation`` plus a JSON header entry
``medkge`` with the model's spec (type, dims, gamma, ...). safetensors holds raw tensors only, so
loading one never executes code from the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import MedkgeError
from .layout import LOCK_FILE

try:
    import fcntl
except ImportError:  # not a POSIX system: folders are not locked
    fcntl = None  # type: ignore[assignment]

# A medkge header is a few hundred bytes; anything far larger is not one of ours.
_MAX_HEADER = 1 << 20
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
_UMASK = os.umask(0o022)
os.umask(_UMASK)
FORMAT = "medkge-model"
FORMAT_VERSION = "1"


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write a file so that readers see the old or the new content, never a torn one."""
    with atomic_file(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


@contextlib.contextmanager
def atomic_file(path: Path, fill: Callable[[Path], None] | None = None) -> Iterator[BinaryIO]:
    """A file opened for writing in place of ``path``: written to a temporary file beside it, synced and
    renamed over ``path`` when the block ends without an error (removed otherwise). ``fill(tmp)``, where
    given, writes the temporary file by its path instead (safetensors' own writer).

    The file system's errors (a full disk, a read-only folder) become :class:`MedkgeError` naming ``path``;
    whatever was at ``path`` before stays as it was."""
    path = Path(path)
    make_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise cannot(path, "write", error) from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if fill is not None:
                fill(Path(tmp))
                os.chmod(tmp, 0o666 & ~_UMASK)  # the writer may have made the file anew
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            Path(tmp).unlink(missing_ok=True)
        # our own writes (a write, the sync, the rename, safetensors' writer), not an error of the caller's
        # block about some other file
        if isinstance(error, OSError) and error.filename in (None, tmp, str(path)):
            raise cannot(path, "write", error) from None
        if isinstance(error, SafetensorError):
            raise MedkgeError(f"{path}: cannot write ({_first_line(error)})") from None
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def cannot(path: Path | str, doing: str, error: OSError) -> MedkgeError:
    """An error of the file system on one of medkge's own files as one line: ``PATH: cannot DOING (reason)``."""
    return MedkgeError(f"{path}: cannot {doing} ({error.strerror or _first_line(error)})")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def make_folder(path: Path | str) -> list[Path]:
    """Create a folder and its missing parents; returns the folders made, deepest first. A path that is
    (or lies under) a regular file, or a parent that cannot be written, is a :class:`MedkgeError`."""
    folder = Path(path)
    missing = []
    try:
        for p in [folder, *folder.parents]:
            if p.is_dir():
                break
            if p.exists() or p.is_symlink():
                if p.is_dir():  # another process (a rank of the same run) made it just now
                    break
                if p == folder:
                    raise MedkgeError(f"{folder}: exists and is not a folder")
                raise MedkgeError(f"{folder}: cannot create the folder ({p} is not a folder)")
            missing.append(p)
    except OSError as error:
        raise cannot(folder, "create the folder", error) from None
    made = []
    for p in reversed(missing):
        try:
            p.mkdir()
            made.append(p)
        except FileExistsError:
            if not p.is_dir():
                raise MedkgeError(f"{folder}: cannot create the folder ({p} is not a folder)") from None
        except OSError as error:
            raise cannot(folder, "create the folder", error) from None
    return made[::-1]


@contextlib.contextmanager
def lock_folder(path: Path | str, what: str) -> Iterator[Path]:
    """Hold the folder ``path`` for one writer while the block runs (``what``: the command, for the message
    another writer gets).

    An advisory lock (``flock``) on ``LOCK_FILE`` inside the folder, which records the holder's pid and host;
    a second writer into the same folder (another ``train``, ``train --resume``, ``crop`` or ``export``) gets
    a :class:`MedkgeError` naming them. The lock ends with the process, even a killed one. The folder and
    its parents are created where missing; the lock file, and those folders if they are left empty (a start
    that failed), are removed at the end.
    """
    folder = Path(path)
    made = make_folder(folder)
    try:
        fd = _acquire(folder, what)
        try:
            yield folder
        finally:
            with contextlib.suppress(OSError):
                (folder / LOCK_FILE).unlink()  # while still held: the next writer locks a fresh file
            os.close(fd)
    finally:
        for p in made:  # deepest first; only the empty ones go
            with contextlib.suppress(OSError):
                p.rmdir()


def _acquire(folder: Path, what: str) -> int:
    lock = folder / LOCK_FILE
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        except OSError as error:
            raise cannot(folder, "write", error) from None
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise MedkgeError(f"{folder}: in use by {holder}; wait for it to end, or write to another folder") from None
        except OSError as error:
            os.close(fd)
            raise cannot(folder, "lock", error) from None
        # the holder before us removes the file as it ends: hold the file that is there now, not a removed one
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    info = json.dumps({"command": what, "pid": os.getpid(), "host": socket.gethostname()})
    try:
        os.ftruncate(fd, 0)
        os.write(fd, info.encode())
    except OSError as error:
        os.close(fd)
        raise cannot(folder, "write", error) from None
    return fd


def _holder(fd: int) -> str:
    """Who holds a lock, from the lock file: "`medkge train` (pid 123 on host)"."""
    try:
        info = json.loads(os.pread(fd, 4096, 0))
        return f"`{str(info['command'])[:80]}` (pid {int(info['pid'])} on {str(info['host'])[:80]})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another medkge process"


@contextlib.contextmanager
def discard_on_failure(folder: Path | str) -> Iterator[None]:
    """Remove the files the block added to ``folder`` if it fails, so that a failed export or crop (a full
    disk) leaves the folder as it found it and does not block its retry. Files there before stay (atomic
    writes leave each one old or new)."""
    folder = Path(folder)
    before = set(os.listdir(folder)) if folder.is_dir() else set()
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            for name in set(os.listdir(folder)) - before - {LOCK_FILE}:
                with contextlib.suppress(OSError):
                    (folder / name).unlink()
        raise


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Save tensors and a JSON-able metadata dict as one safetensors file, atomically (written from the
    tensors' own memory: no second copy of a large table)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    header = {"medkge": json.dumps(metadata)}
    with atomic_file(path, fill=lambda tmp: save_file(tensors, tmp, metadata=header)):
        pass


_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16"}


def save_tensors_streamed(
    path: Path, tensors: list[tuple[str, torch.dtype, list[int], Iterable[torch.Tensor]]], metadata: dict[str, Any]
) -> None:
    """A safetensors file written piece by piece, atomically: ``(name, dtype, shape, pieces)`` where the
    pieces, in order, make up the tensor's rows (a table assembled from the shards of a distributed run,
    never held in memory whole)."""
    header: dict[str, Any] = {"__metadata__": {"medkge": json.dumps(metadata)}}
    offset = 0
    for name, dtype, shape, _ in tensors:
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with atomic_file(path) as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for name, dtype, _, pieces in tensors:
            written, expected = 0, header[name]["data_offsets"][1] - header[name]["data_offsets"][0]
            for piece in pieces:
                data = piece.detach().to(dtype).contiguous().cpu().numpy()
                f.write(memoryview(data).cast("B"))
                written += data.nbytes
            if written != expected:
                raise ValueError(f"{path}: {name}: {written} bytes written, {expected} expected")


def load_tensors(path: Path, what: str = "medkge file") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a file written by :func:`save_tensors`; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise MedkgeError(f"{path}: no such file")
    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
        metadata = json.loads(header["medkge"])
    except (SafetensorError, OSError, ValueError, KeyError, json.JSONDecodeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise MedkgeError(f"{path}: not a valid {what} (truncated or corrupt? {reason})") from None
    if not isinstance(metadata, dict):
        raise MedkgeError(f"{path}: not a valid {what} (bad metadata)")
    return tensors, metadata


def save_model(path: Path, model: Any) -> None:
    """Save a :class:`~medkge.model.CroppableModel` as a safetensors model file."""
    save_tensors(
        path,
        {"entity": model.entity, "relation": model.relation},
        {"format": FORMAT, "version": FORMAT_VERSION, "spec": model.spec()},
    )


def load_model(path: Path, device: str | torch.device = "cpu") -> Any:
    """Load a model file written by :func:`save_model`, after checking its header (:func:`check_model_file`)."""
    from .model import CroppableModel

    check_model_file(path)
    tensors, metadata = load_tensors(path, "medkge model file")
    if metadata.get("format") != FORMAT or "spec" not in metadata:
        raise MedkgeError(f"{path}: not a medkge model file")
    if set(tensors) != {"entity", "relation"}:
        raise MedkgeError(f"{path}: a model file holds the tables 'entity' and 'relation', found {sorted(tensors)}")
    try:
        model = CroppableModel.from_spec(metadata["spec"], tensors["entity"], tensors["relation"])
    except (KeyError, TypeError, ValueError) as error:
        raise MedkgeError(f"{path}: bad model description ({error})") from None
    return model.to(device).eval()


def load_into(model: Any, path: Path) -> None:
    """Copy the tables of a model file into ``model`` (same shape), keeping its parameters and device."""
    saved = load_model(path)
    if saved.entity.shape != model.entity.shape or saved.relation.shape != model.relation.shape:
        raise MedkgeError(f"{path}: its tables do not have the shapes of the model being trained")
    with torch.no_grad():
        model.entity.copy_(saved.entity)
        model.relation.copy_(saved.relation)


def check_model_file(path: Path) -> None:
    """Check a model file's header before loading it: a clear error for anything that is not a medkge model.

    Reads only the header (8 bytes of length, then JSON): tensor names, dtypes and shapes must agree with
    the spec recorded beside them, so that nothing is allocated from numbers a damaged file made up.
    """
    path = Path(path)

    def bad(reason: str) -> MedkgeError:
        return MedkgeError(f"{path}: not a valid medkge model file ({reason})")

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little") if size >= 8 else -1
            if length < 2 or length > min(size - 8, _MAX_HEADER):
                raise bad("truncated, or not a safetensors file")
            header = json.loads(f.read(length))
    except FileNotFoundError:
        raise MedkgeError(f"{path}: no such file") from None
    except OSError as error:
        raise MedkgeError(f"{path}: cannot read ({error.strerror or error})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad("the header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    try:
        meta = json.loads(header.get("__metadata__", {}).get("medkge", "null"))
    except (AttributeError, TypeError, json.JSONDecodeError):
        raise bad("no medkge description in the header") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("spec"), dict):
        raise bad("no medkge description in the header")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if set(tensors) != {"entity", "relation"}:
        raise bad(f"expected the tables 'entity' and 'relation', found {sorted(tensors)}")
    from .scoring import check_dims, get_interaction

    spec = meta["spec"]
    try:
        interaction = get_interaction(str(spec["model"]), int(spec.get("p", 1)))
        dims = check_dims(spec["dims"])
        expected = {
            "entity": [int(spec["num_entities"]), interaction.entity_parts, dims[-1]],
            "relation": [int(spec["num_relations"]), interaction.relation_parts, dims[-1]],
        }
    except (KeyError, TypeError, ValueError) as error:
        raise bad(f"bad model description: {error}") from None
    for name, entry in tensors.items():
        if not isinstance(entry, dict) or entry.get("dtype") not in _FLOAT_DTYPES:
            raise bad(f"table {name!r} is not a float table")
        if entry.get("shape") != expected[name]:
            raise bad(f"table {name!r} has shape {entry.get('shape')}, its description says {expected[name]}")
        offsets = entry.get("data_offsets")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(x, int) for x in offsets):
            raise bad(f"table {name!r} has no valid data offsets")
        if offsets[1] > size - 8 - length:
            raise bad("truncated: the tables end past the end of the file")


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as error:
        raise cannot(path, "read", error) from None
    return digest.hexdigest()


def write_vocab(path: Path, labels: list[str]) -> None:
    atomic_write(path, "".join(f"{i}\t{label}\n" for i, label in enumerate(labels)))


def read_vocab(path: Path) -> list[str]:
    """Labels in id order from an ``id<TAB>label`` file."""
    labels: list[str] = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise MedkgeError(f"{path}: cannot read ({error.strerror or error})") from None
    for number, line in enumerate(text.split("\n"), start=1):
        if not line:
            continue
        index, sep, label = line.partition("\t")
        if not sep or not index.isdigit() or int(index) != len(labels):
            raise MedkgeError(f"{path}:{number}: expected '<id><TAB><label>' with ids 0, 1, 2, ... in order")
        labels.append(label)
    return labels


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line; a write cut short (a full disk) is taken back, so no torn line stays."""
    line = memoryview((json.dumps(record) + "\n").encode())
    try:
        with open(path, "ab", buffering=0) as f:
            start = f.seek(0, os.SEEK_END)
            try:
                while line:
                    line = line[f.write(line) :]
            except OSError:
                with contextlib.suppress(OSError):
                    f.truncate(start)
                raise
    except OSError as error:
        raise cannot(path, "write", error) from None


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a JSON-lines file (none if it is missing). A last line cut short by a crash is skipped;
    a bad line elsewhere is an error naming file and line."""
    if not Path(path).is_file():
        return
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8"
        raise MedkgeError(f"{path}: cannot read ({reason or _first_line(error)})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # no newline after it: a write cut short
                return
            raise MedkgeError(f"{path}:{number}: not a JSON record") from None


def truncate_jsonl(path: Path, lines: int) -> None:
    """Keep the first ``lines`` records (a resumed run drops what the interrupted one logged later)."""
    rewrite_jsonl(path, list(read_jsonl(path))[:lines])


def rewrite_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace a JSON-lines file with ``records``, atomically."""
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in records))


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except OSError as error:
        raise MedkgeError(f"{path}: cannot read ({error.strerror or error})") from None
    except json.JSONDecodeError as error:
        raise MedkgeError(f"{path}: not valid JSON ({error})") from None
