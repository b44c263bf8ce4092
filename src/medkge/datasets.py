"""Knowledge graphs: the bundled benchmarks and a user's own folders of triple files.

A split file holds one triple per line, ``head<TAB>relation<TAB>tail`` (plain or gzipped, LF or CRLF,
with or without a UTF-8 byte order mark). Entity and relation ids are the positions of the labels in
sorted order, taken over all three splits, so they do not depend on the order of lines. Ids are int32.

Files are parsed by pyarrow's multi-threaded CSV reader and its hash kernels (50M triples in tens of
seconds); a file the fast reader refuses is read again line by line, so that a malformed file gets the
exact error (file and line). For a user folder of large files, the id-mapped splits are cached beside
the data (``.medkge-cache/``, numpy arrays and the vocabularies) and loaded from there in seconds; the
cache is rebuilt when a split file changes (size or modification time).

Entities that occur only in valid/test (WN18RR: 210 test triples, with 209 such entities) are kept, as
in the original ConvE and RotatE evaluations whose figures the literature reports: they get ids and
(untrained) embeddings, and their triples are ranked like any other. ``drop_unseen=True`` removes the
valid/test triples whose entities or relation do not occur in train instead (PyKEEN's behaviour).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import MedkgeError, MedkgeWarning, closest

BUNDLED = (
    "wn18rr",
    "fb15k237",
    "nations",
    "umls",
    "kinships",
    "countries_s1",
    "countries_s2",
    "countries_s3",
)
SPLITS = ("train", "valid", "test")
_SUFFIXES = (".txt", ".txt.gz", ".tsv", ".tsv.gz", "", ".gz")
CACHE_DIR = ".medkge-cache"
_CACHE_VERSION = 1
# user folders whose split files add up to this many bytes or more are cached by default
CACHE_MIN_BYTES = 16 << 20
_BOM = "\ufeff"
# bytes of one line of a triple file: a longer one is refused before the file is read whole (a 2 GiB line
# took GBs of memory before any error)
MAX_LINE = 1 << 20

Triple = tuple[str, str, str]


@dataclass
class Dataset:
    """A knowledge graph split into train/valid/test, with ids for entities and relations.

    ``train``, ``valid`` and ``test`` are integer tensors ``[N, 3]`` of (head, relation, tail) ids (int32
    when loaded from files); ``entities`` and ``relations`` are the labels in id order.
    ``tail_candidates`` (Countries only) restricts ranking to those entities, and ``directions``
    says which sides are ranked in evaluation.
    """

    name: str
    entities: list[str]
    relations: list[str]
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    tail_candidates: torch.Tensor | None = None
    directions: tuple[str, ...] = ("head", "tail")
    _entity_ids: dict[str, int] | None = field(default=None, repr=False)
    _relation_ids: dict[str, int] | None = field(default=None, repr=False)

    @property
    def num_entities(self) -> int:
        return len(self.entities)

    @property
    def num_relations(self) -> int:
        return len(self.relations)

    def split(self, name: str) -> torch.Tensor:
        """The triples of split ``name`` ("train", "valid" or "test")."""
        if name not in SPLITS:
            raise MedkgeError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def known_triples(self) -> torch.Tensor:
        """All triples of all splits: the filter of filtered evaluation."""
        return torch.cat([self.train, self.valid, self.test])

    @property
    def entity_ids(self) -> dict[str, int]:
        if self._entity_ids is None:
            self._entity_ids = {e: i for i, e in enumerate(self.entities)}
        return self._entity_ids

    @property
    def relation_ids(self) -> dict[str, int]:
        if self._relation_ids is None:
            self._relation_ids = {r: i for i, r in enumerate(self.relations)}
        return self._relation_ids

    def fingerprint(self) -> str:
        """A sha256 over vocabularies and triples: two datasets with equal fingerprints are the same."""
        digest = hashlib.sha256()
        for labels in (self.entities, self.relations):
            digest.update("\n".join(labels).encode())
            digest.update(b"\0")
        for split in SPLITS:
            digest.update(self.split(split).numpy().astype("<i8").tobytes())
        return digest.hexdigest()

    def summary(self) -> dict[str, int | str]:
        return {
            "name": self.name,
            "entities": self.num_entities,
            "relations": self.num_relations,
            **{split: len(self.split(split)) for split in SPLITS},
        }

    def unseen(self) -> dict[str, Any]:
        """What valid/test hold that train does not: distinct unseen entities and relations, and per split
        the triples that have any of them."""
        seen_e = torch.zeros(self.num_entities, dtype=torch.bool)
        seen_e[self.train[:, 0].long()] = True
        seen_e[self.train[:, 2].long()] = True
        seen_r = torch.zeros(self.num_relations, dtype=torch.bool)
        seen_r[self.train[:, 1].long()] = True
        entities, relations, triples = set(), set(), {}
        for split in ("valid", "test"):
            x = self.split(split).long()
            bad_h, bad_t, bad_r = ~seen_e[x[:, 0]], ~seen_e[x[:, 2]], ~seen_r[x[:, 1]]
            entities |= set(x[bad_h, 0].tolist()) | set(x[bad_t, 2].tolist())
            relations |= set(x[bad_r, 1].tolist())
            triples[split] = int((bad_h | bad_t | bad_r).sum())
        return {"entities": len(entities), "relations": len(relations), "triples": triples}

    def without_unseen(self) -> Dataset:
        """The same graph without the valid/test triples whose entities or relation do not occur in train."""
        seen_e = torch.zeros(self.num_entities, dtype=torch.bool)
        seen_e[self.train[:, 0].long()] = True
        seen_e[self.train[:, 2].long()] = True
        seen_r = torch.zeros(self.num_relations, dtype=torch.bool)
        seen_r[self.train[:, 1].long()] = True
        kept = {}
        for split in ("valid", "test"):
            x = self.split(split)
            xl = x.long()
            kept[split] = x[seen_e[xl[:, 0]] & seen_e[xl[:, 2]] & seen_r[xl[:, 1]]]
        return replace(self, **kept)


def warn_unseen(dataset: Dataset, dropped: bool = False) -> None:
    """Warn, with counts, where valid/test hold entities or relations that train does not."""
    if dropped:
        return
    unseen = dataset.unseen()
    if not any(unseen["triples"].values()):
        return
    e, r = unseen["entities"], unseen["relations"]
    which = " and ".join(x for x in (_count(e, "entity", "entities"), _count(r, "relation", "relations")) if x)
    triples = " and ".join(f"{n:,} {split}" for split, n in unseen["triples"].items() if n)
    plural = "" if sum(unseen["triples"].values()) == 1 else "s"
    warnings.warn(
        f"{dataset.name}: {which} {'occurs' if e + r == 1 else 'occur'} only in valid/test ({triples} "
        f"triple{plural}); they are kept and ranked with untrained embeddings (--drop-unseen, config "
        "drop_unseen: true, removes those triples)",
        MedkgeWarning,
        stacklevel=2,
    )


def _count(n: int, one: str, many: str) -> str:
    """ "1 entity", "3 entities"; "" for none."""
    return "" if not n else f"{n:,} {one if n == 1 else many}"


def list_datasets() -> list[str]:
    """Names of the datasets bundled with medkge."""
    return list(BUNDLED)


def load_dataset(name_or_path: str | Path, drop_unseen: bool = False, *, cache: bool | None = None) -> Dataset:
    """Load a bundled dataset by name, or a folder holding train/valid/test triple files.

    ``cache``: for a user folder, read and write the id-mapped splits in ``<folder>/.medkge-cache``
    (default: when the split files add up to 16 MiB or more). Bundled datasets are never cached.
    """
    path = Path(name_or_path)
    if str(name_or_path) in BUNDLED:
        folder: Path | Traversable = resources.files("medkge") / "data" / str(name_or_path)
        name, bundled = str(name_or_path), True
    elif path.is_dir():
        folder, name, bundled = path, path.resolve().name, False
    else:
        raise MedkgeError(
            f"unknown dataset {str(name_or_path)!r}: not a bundled dataset "
            f"({', '.join(BUNDLED)}) nor a folder{closest(str(name_or_path), BUNDLED)}"
        )
    files = {split: _find_split(folder, split) for split in SPLITS}
    use_cache = False
    if not bundled:
        assert isinstance(folder, Path)
        use_cache = cache if cache is not None else sum(f.stat().st_size for f in files.values()) >= CACHE_MIN_BYTES
    loaded = _read_cache(folder, files) if use_cache else None
    if loaded is None:
        loaded = _parse(files)
        if use_cache:
            _write_cache(folder, files, *loaded)
    entities, relations, arrays = loaded
    tensors = {split: torch.from_numpy(arrays[split]) for split in SPLITS}
    dataset = Dataset(name, entities, relations, **tensors)
    if drop_unseen:
        dataset = dataset.without_unseen()
    regions = _find_optional(folder, "regions.list")
    if regions is not None:
        # Countries: queries are (country, locatedin, ?) ranked over the regions only (RotatE's protocol).
        labels = [line.strip() for line in _read_text(regions).splitlines() if line.strip()]
        missing = [x for x in labels if x not in dataset.entity_ids]
        if missing:
            raise MedkgeError(f"{regions}: region {missing[0]!r} is not an entity of the dataset")
        dataset.tail_candidates = torch.tensor([dataset.entity_ids[x] for x in labels])
        dataset.directions = ("tail",)
    return dataset


# ---- parsing -------------------------------------------------------------------------------------


def _parse(files: dict[str, Any]) -> tuple[list[str], list[str], dict[str, np.ndarray]]:
    """Labels (sorted) and int32 id triples of every split."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = {split: _read_columns(path) for split, path in files.items()}
    lengths = [len(columns[split][0]) for split in SPLITS]

    def encode(i: int):  # one hash pass over a column of all splits; pyarrow releases the GIL
        return pc.dictionary_encode(pa.chunked_array([c for s in SPLITS for c in columns[s][i].chunks]))

    with ThreadPoolExecutor(2) as pool:
        h, r, t = pool.map(encode, range(3))
    # the dictionaries hold each distinct label once (a few million at most): trim and sort those only
    dicts = [
        pc.utf8_trim_whitespace(col.chunk(0).dictionary) if col.num_chunks else pa.array([], pa.string())
        for col in (h, r, t)
    ]
    longest = [pc.max(pc.binary_length(d)).as_py() or 0 for d in dicts]
    if sum(longest) + 2 > MAX_LINE:  # maybe a line too long: the line reader finds it (or finds none)
        for path in files.values():
            _check_lines(path)
    for i, d in enumerate(dicts):
        if pc.any(pc.equal(pc.utf8_length(d), 0)).as_py():  # a field of white space only: find its line
            for path in files.values():
                read_triples(path)
            raise MedkgeError(f"{files['train'].parent}: a split has an empty {('head', 'relation', 'tail')[i]}")
    entities = pc.unique(pa.chunked_array([dicts[0], dicts[2]]))
    entities = entities.take(pc.sort_indices(entities))
    relations = dicts[1].unique()
    relations = relations.take(pc.sort_indices(relations))
    ids = []
    for col, d, vocab in ((h, dicts[0], entities), (r, dicts[1], relations), (t, dicts[2], entities)):
        lookup = pc.index_in(d, value_set=vocab).to_numpy(zero_copy_only=False).astype(np.int32)
        index = np.concatenate([c.indices.to_numpy() for c in col.chunks]) if col.num_chunks else np.zeros(0, np.int32)
        ids.append(lookup[index])
    stacked = np.stack(ids, axis=1)
    bounds = np.cumsum([0, *lengths])
    arrays = {split: np.ascontiguousarray(stacked[bounds[i] : bounds[i + 1]]) for i, split in enumerate(SPLITS)}
    return entities.to_pylist(), relations.to_pylist(), arrays


def _read_columns(path: Path | Traversable):
    """(heads, relations, tails) of one split file as pyarrow string columns (labels not yet trimmed).

    pyarrow's reader takes tab-separated lines of exactly three fields (and skips a UTF-8 byte order
    mark); anything else it refuses (a line
    split on spaces, a missing field, bad UTF-8, a broken gzip file) is read by :func:`read_triples`,
    which accepts what medkge always accepted and names the file and line of what it does not.
    """
    import pyarrow as pa
    import pyarrow.csv as pcsv

    text = pa.string()
    options = {
        "read_options": pcsv.ReadOptions(column_names=["h", "r", "t"], block_size=1 << 24),
        "parse_options": pcsv.ParseOptions(
            delimiter="\t", quote_char=False, double_quote=False, ignore_empty_lines=True
        ),
        "convert_options": pcsv.ConvertOptions(
            column_types={"h": text, "r": text, "t": text}, strings_can_be_null=False
        ),
    }
    try:
        if isinstance(path, Path):
            table = pcsv.read_csv(str(path), **options)  # gzip detected from the name
        else:  # a bundled file inside the package
            data = path.read_bytes()
            table = pcsv.read_csv(
                pa.BufferReader(gzip.decompress(data) if path.name.endswith(".gz") else data), **options
            )
    except (pa.ArrowException, OSError, EOFError, ValueError):
        table = None
    if table is None or table.num_rows == 0:
        triples = read_triples(path)  # raises with the file and line, or reads what the fast path refused
        return tuple(pa.chunked_array([pa.array([x[i] for x in triples], text)]) for i in range(3))
    return tuple(table.column(i) for i in range(3))


def read_triples(path: Path | Traversable) -> list[Triple]:
    """Read a triple file: one ``head<TAB>relation<TAB>tail`` per line, plain or gzipped.

    Lines without a tab are split on white space. Blank lines are skipped, a leading byte order mark
    is dropped, fields are stripped of surrounding white space. Errors name file and line; a line longer
    than ``MAX_LINE`` bytes is refused before the file is read whole.
    """
    _check_lines(path)
    text = _read_text(path)
    triples: list[Triple] = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) != 3:
            raise MedkgeError(
                f"{path}:{number}: expected 3 tab-separated fields (head, relation, tail), found {len(fields)}"
            )
        fields = [f.strip() for f in fields]
        if not all(fields):
            raise MedkgeError(f"{path}:{number}: empty {('head', 'relation', 'tail')[fields.index('')]}")
        triples.append((fields[0], fields[1], fields[2]))
    if not triples:
        raise MedkgeError(f"{path}: no triples (the split is empty)")
    return triples


def write_triples(path: Path, triples: list[Triple]) -> None:
    """Write triples as tab-separated lines (gzipped when the name ends in .gz)."""
    data = "".join(f"{h}\t{r}\t{t}\n" for h, r, t in triples).encode()
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)


def _read_text(path: Path | Traversable) -> str:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise MedkgeError(f"{path}: cannot read ({error.strerror or error})") from None
    if path.name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise MedkgeError(f"{path}: not a valid gzip file ({error})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise MedkgeError(f"{path}:{line}: not valid UTF-8") from None
    return text[1:] if text.startswith(_BOM) else text  # files saved on Windows often start with a BOM


def _check_lines(path: Path | Traversable) -> None:
    """Refuse a line longer than ``MAX_LINE`` bytes, reading the file (decompressed) in 1 MiB pieces."""
    number, running = 1, 0  # the line being read, and its bytes so far
    try:
        with path.open("rb") as raw, gzip.open(raw) if path.name.endswith(".gz") else raw as f:
            while chunk := f.read(1 << 20):
                pieces = chunk.split(b"\n")
                lengths = [running + len(pieces[0]), *map(len, pieces[1:])]
                if max(lengths[:-1], default=0) > MAX_LINE or lengths[-1] > MAX_LINE:
                    over = next(i for i, n in enumerate(lengths) if n > MAX_LINE)
                    raise MedkgeError(
                        f"{path}:{number + over}: a line longer than {MAX_LINE:,} bytes (is this a triple file?)"
                    )
                number += len(pieces) - 1
                running = lengths[-1]
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise MedkgeError(f"{path}: not a valid gzip file ({error})") from None
    except OSError as error:
        raise MedkgeError(f"{path}: cannot read ({error.strerror or error})") from None


def _find_optional(folder: Path | Traversable, stem: str):
    for suffix in ("", ".gz"):
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _find_split(folder: Path | Traversable, split: str):
    for suffix in _SUFFIXES:
        candidate = folder / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    names = ", ".join(f"{split}{s}" for s in _SUFFIXES)
    raise MedkgeError(f"{folder}: no {split} split (looked for {names})")


# ---- the binary cache beside a user's files ---------------------------------------------------------


def _signature(files: dict[str, Path]) -> dict[str, Any]:
    """What the cache was made from: each split file's name, size, modification time, and a hash of its
    first and last 64 KiB (a same-size edit within one tick of the file system's clock changes that)."""
    out: dict[str, Any] = {"version": _CACHE_VERSION}
    for split, path in files.items():
        stat = path.stat()
        with open(path, "rb") as f:
            ends = f.read(1 << 16)
            f.seek(max(0, stat.st_size - (1 << 16)))
            ends += f.read()
        sample = hashlib.sha256(ends).hexdigest()
        out[split] = {"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sample": sample}
    return out


def _read_cache(folder: Path, files: dict[str, Path]) -> tuple[list[str], list[str], dict[str, np.ndarray]] | None:
    cache = folder / CACHE_DIR
    try:
        meta = json.loads((cache / "meta.json").read_text())
        if meta.get("source") != _signature(files):
            return None
        entities = (cache / "entities.txt").read_text(encoding="utf-8").split("\n")
        relations = (cache / "relations.txt").read_text(encoding="utf-8").split("\n")
        arrays = {split: np.load(cache / f"{split}.npy", allow_pickle=False) for split in SPLITS}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing, partial or damaged: parse the files again
    if (len(entities), len(relations)) != (meta.get("entities"), meta.get("relations")):
        return None
    for x in arrays.values():
        if x.ndim != 2 or x.shape[1] != 3 or x.dtype != np.int32:
            return None
    return entities, relations, arrays


def _write_cache(folder: Path, files: dict[str, Path], entities, relations, arrays) -> None:
    from .files import atomic_write

    cache = folder / CACHE_DIR
    try:
        cache.mkdir(exist_ok=True)
        (cache / "meta.json").unlink(missing_ok=True)  # written last: a cache without it is ignored
        for split in SPLITS:
            tmp = cache / f".{split}.npy.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                np.save(f, arrays[split], allow_pickle=False)
            os.replace(tmp, cache / f"{split}.npy")
        atomic_write(cache / "entities.txt", "\n".join(entities))
        atomic_write(cache / "relations.txt", "\n".join(relations))
        meta = {"source": _signature(files), "entities": len(entities), "relations": len(relations)}
        atomic_write(cache / "meta.json", json.dumps(meta, indent=1))
    except (OSError, MedkgeError) as error:  # atomic_write's errors are MedkgeErrors naming the file
        reason = (error.strerror if isinstance(error, OSError) else None) or str(error)
        warnings.warn(f"{cache}: cannot write the dataset cache ({reason})", MedkgeWarning, stacklevel=3)
