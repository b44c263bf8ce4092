"""Loading the bundled benchmarks and a user's own triple files, and the errors for bad files."""

from __future__ import annotations

import gzip
import hashlib
from importlib import resources

import pytest
import torch

from medkge import MedkgeError, list_datasets, load_dataset

# counts from the datasets' README (entities and relations over all splits)
EXPECTED = {
    "wn18rr": (40943, 11, 86835, 3034, 3134),
    "fb15k237": (14541, 237, 272115, 17535, 20466),
    "nations": (14, 55, 1592, 199, 201),
    "umls": (135, 46, 5216, 652, 661),
    "kinships": (104, 25, 8544, 1068, 1074),
    "countries_s1": (271, 2, 1111, 24, 24),
    "countries_s2": (271, 2, 1063, 24, 24),
    "countries_s3": (271, 2, 985, 24, 24),
}


def test_bundled_files_match_their_upstream_checksums():
    data = resources.files("medkge") / "data"
    lines = (data / "SHA256SUMS").read_text().split("\n")
    checked = 0
    for line in filter(None, lines):
        digest, name = line.split()
        content = gzip.decompress((data / f"{name}.gz").read_bytes())
        assert hashlib.sha256(content).hexdigest() == digest, name
        checked += 1
    assert checked == 27


@pytest.mark.parametrize("name", list(EXPECTED))
def test_bundled_datasets_have_their_published_sizes(name):
    ds = load_dataset(name)
    assert (ds.num_entities, ds.num_relations, len(ds.train), len(ds.valid), len(ds.test)) == EXPECTED[name]
    assert ds.entities == sorted(ds.entities) and ds.relations == sorted(ds.relations)
    for split in ("train", "valid", "test"):
        x = ds.split(split)
        assert x.dtype == torch.int32 and x.shape[1] == 3  # ids fit in int32: half the memory of int64
        assert x[:, [0, 2]].max() < ds.num_entities and x[:, 1].max() < ds.num_relations


def test_fb15k237_crlf_does_not_leak_into_labels():
    ds = load_dataset("fb15k237")
    assert not any(e.endswith("\r") for e in ds.entities)


def test_countries_rank_regions_only():
    ds = load_dataset("countries_s1")
    assert ds.directions == ("tail",)
    assert sorted(ds.entities[i] for i in ds.tail_candidates) == sorted(
        ["africa", "americas", "asia", "europe", "oceania"]
    )


def test_unseen_entities_are_kept_or_dropped():
    kept = load_dataset("wn18rr")
    dropped = load_dataset("wn18rr", drop_unseen=True)
    assert kept.num_entities == dropped.num_entities == 40943
    assert len(kept.test) - len(dropped.test) == 210
    assert len(kept.valid) - len(dropped.valid) == 210


def test_ids_do_not_depend_on_line_order(tmp_path):
    lines = ["a\tr1\tb", "b\tr2\tc", "c\tr1\ta", "d\tr2\ta"]
    for folder, order in (("x", lines), ("y", lines[::-1])):
        (tmp_path / folder).mkdir()
        for split in ("train", "valid", "test"):
            (tmp_path / folder / f"{split}.txt").write_text("\n".join(order) + "\n")
    x, y = load_dataset(tmp_path / "x"), load_dataset(tmp_path / "y")
    assert x.entities == y.entities == ["a", "b", "c", "d"]
    assert sorted(x.train.tolist()) == sorted(y.train.tolist())


def write_splits(folder, train="a\tr\tb\n", valid="b\tr\tc\n", test="c\tr\ta\n", suffix=".txt"):
    folder.mkdir(exist_ok=True)
    for split, text in (("train", train), ("valid", valid), ("test", test)):
        path = folder / f"{split}{suffix}"
        data = text.encode() if isinstance(text, str) else text
        path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    return folder


def test_user_folder_plain_gzip_crlf_and_spaces(tmp_path):
    ds = load_dataset(write_splits(tmp_path / "gz", train="a\tr\tb\r\nb\tr\tc\r\n\r\n", suffix=".txt.gz"))
    assert ds.entities == ["a", "b", "c"] and len(ds.train) == 2
    ds = load_dataset(write_splits(tmp_path / "sp", train="a r b\nlabel with space\tr\tc\n"))
    assert "label with space" in ds.entities
    assert ds.name == "sp"


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ("a\tr\tb\nc\tr\n", r"train.txt:2: expected 3 tab-separated fields \(head, relation, tail\), found 2"),
        ("a\tr\tb\tx\n", r"train.txt:1: expected 3 .* found 4"),
        ("a\t\tb\n", r"train.txt:1: empty relation"),
        ("\n\n", r"train.txt: no triples"),
        (b"a\tr\tb\n\xff\xfe\tr\tb\n", r"train.txt:2: not valid UTF-8"),
    ],
)
def test_bad_files_name_the_file_and_line(tmp_path, train, message):
    with pytest.raises(MedkgeError, match=message):
        load_dataset(write_splits(tmp_path / "bad", train=train))


def test_missing_split_broken_gzip_and_unknown_name(tmp_path):
    folder = write_splits(tmp_path / "missing")
    (folder / "valid.txt").unlink()
    with pytest.raises(MedkgeError, match="no valid split"):
        load_dataset(folder)
    folder = write_splits(tmp_path / "broken")
    (folder / "train.txt").unlink()
    (folder / "train.txt.gz").write_bytes(b"not gzip")
    with pytest.raises(MedkgeError, match=r"train.txt.gz: not a valid gzip file"):
        load_dataset(folder)
    with pytest.raises(MedkgeError, match="closest: 'wn18rr'"):
        load_dataset("wn18r")


def test_list_and_fingerprint():
    assert set(list_datasets()) == set(EXPECTED)
    assert load_dataset("nations").fingerprint() == load_dataset("nations").fingerprint()
    assert load_dataset("nations").fingerprint() != load_dataset("umls").fingerprint()


def test_the_fast_reader_and_the_line_reader_agree(tmp_path):
    """pyarrow reads tab-separated files; space-separated ones go through the careful line reader."""
    rows = ["a\tr\tb", " b \t r\tc ", "c\ts\ta", "d\tr\ta"]
    tabs = load_dataset(write_splits(tmp_path / "tabs", "\n".join(rows), "d\tr\tb\n", "a\ts\td\n"))
    spaces = load_dataset(
        write_splits(tmp_path / "spaces", "\n".join(r.replace("\t", " ") for r in rows), "d r b\n", "a s d\n")
    )
    assert tabs.entities == spaces.entities == ["a", "b", "c", "d"]  # labels trimmed on both paths
    for split in ("train", "valid", "test"):
        assert torch.equal(tabs.split(split), spaces.split(split))


def test_the_cache_is_used_and_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    import medkge.datasets as datasets

    folder = write_splits(tmp_path / "kg", "a\tr\tb\nb\tr\tc\n")
    first = load_dataset(folder, cache=True)
    assert (folder / ".medkge-cache" / "meta.json").is_file()
    calls = []
    real = datasets._parse

    def counting(files):
        calls.append(files)
        return real(files)

    monkeypatch.setattr(datasets, "_parse", counting)
    cached = load_dataset(folder, cache=True)
    assert not calls and cached.fingerprint() == first.fingerprint()  # from the cache
    (folder / "train.txt").write_text("a\tr\tb\nb\tr\td\n")  # same size, another tail
    changed = load_dataset(folder, cache=True)
    assert len(calls) == 1 and "d" in changed.entities
    assert load_dataset(folder, cache=True).entities == changed.entities and len(calls) == 1
    (folder / ".medkge-cache" / "train.npy").write_bytes(b"damaged")
    assert load_dataset(folder, cache=True).fingerprint() == changed.fingerprint() and len(calls) == 2
    assert load_dataset(folder, cache=False).fingerprint() == changed.fingerprint() and len(calls) == 3


def test_small_folders_are_not_cached_by_default(tmp_path):
    folder = write_splits(tmp_path / "kg")
    load_dataset(folder)
    assert not (folder / ".medkge-cache").exists()
