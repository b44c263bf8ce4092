"""Knowledge graphs: the bundled benchmarks and a user's own folders of triple files.

A split file holds one triple per line, ``head<TAB>relation<TAB>tail`` (plain or gzipped, LF or CRLF).
Entity and relation ids are the positions of the labels in sorted order, taken over all three
splits, so they do not depend on the order of lines.

Entities that occur only in valid/test (WN18RR has 209 such test triples) are kept, as in the
original ConvE and RotatE evaluations whose figures the literature reports: they get ids and
(untrained) embeddings, and their triples are ranked like any other. ``drop_unseen=True`` removes
those triples from valid/test instead (PyKEEN's behaviour).
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import numpy as np
import torch

from .errors import MedkgeError, closest

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

Triple = tuple[str, str, str]


@dataclass
class Dataset:
    """A knowledge graph split into train/valid/test, with ids for entities and relations.

    ``train``, ``valid`` and ``test`` are LongTensors ``[N, 3]`` of (head, relation, tail) ids;
    ``entities`` and ``relations`` are the labels in id order.
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


def list_datasets() -> list[str]:
    """Names of the datasets bundled with medkge."""
    return list(BUNDLED)


def load_dataset(name_or_path: str | Path, drop_unseen: bool = False) -> Dataset:
    """Load a bundled dataset by name, or a folder holding train/valid/test triple files."""
    path = Path(name_or_path)
    if str(name_or_path) in BUNDLED:
        folder = resources.files("medkge") / "data" / str(name_or_path)
        name = str(name_or_path)
    elif path.is_dir():
        folder = path
        name = path.resolve().name
    else:
        raise MedkgeError(
            f"unknown dataset {str(name_or_path)!r}: not a bundled dataset "
            f"({', '.join(BUNDLED)}) nor a folder{closest(str(name_or_path), BUNDLED)}"
        )
    raw = {split: read_triples(_find_split(folder, split)) for split in SPLITS}
    entities = sorted({x for triples in raw.values() for h, _, t in triples for x in (h, t)})
    relations = sorted({r for triples in raw.values() for _, r, _ in triples})
    entity_ids = {e: i for i, e in enumerate(entities)}
    relation_ids = {r: i for i, r in enumerate(relations)}
    tensors = {split: _to_ids(triples, entity_ids, relation_ids) for split, triples in raw.items()}
    if drop_unseen:
        seen = torch.zeros(len(entities), dtype=torch.bool)
        seen[tensors["train"][:, 0]] = True
        seen[tensors["train"][:, 2]] = True
        for split in ("valid", "test"):
            x = tensors[split]
            tensors[split] = x[seen[x[:, 0]] & seen[x[:, 2]]]
    dataset = Dataset(name, entities, relations, **tensors, _entity_ids=entity_ids, _relation_ids=relation_ids)
    regions = _find_optional(folder, "regions.list")
    if regions is not None:
        # Countries: queries are (country, locatedin, ?) ranked over the regions only (RotatE's protocol).
        labels = [line.strip() for line in _read_text(regions).splitlines() if line.strip()]
        missing = [x for x in labels if x not in entity_ids]
        if missing:
            raise MedkgeError(f"{regions}: region {missing[0]!r} is not an entity of the dataset")
        dataset.tail_candidates = torch.tensor([entity_ids[x] for x in labels])
        dataset.directions = ("tail",)
    return dataset


def read_triples(path: Path | Traversable) -> list[Triple]:
    """Read a triple file: one ``head<TAB>relation<TAB>tail`` per line, plain or gzipped.

    Lines without a tab are split on white space. Blank lines are skipped. Errors name file and line.
    """
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
        except (OSError, EOFError) as error:
            raise MedkgeError(f"{path}: not a valid gzip file ({error})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise MedkgeError(f"{path}:{line}: not valid UTF-8") from None


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


def _to_ids(triples: list[Triple], entity_ids: dict[str, int], relation_ids: dict[str, int]) -> torch.Tensor:
    array = np.array([(entity_ids[h], relation_ids[r], entity_ids[t]) for h, r, t in triples], dtype=np.int64).reshape(
        -1, 3
    )
    return torch.from_numpy(array)
