"""One typed configuration: defaults in one place, YAML in and out, bad values named at load time."""

from __future__ import annotations

import pytest

from medkge import Config, MedkgeError
from medkge.config import all_keys, describe


def test_yaml_round_trip_and_overrides(tmp_path):
    cfg = Config().with_overrides({"train.lr": "5e-4", "model.dims": "10:40:10", "med.evolutionary": "false"})
    assert cfg.train.lr == 5e-4 and cfg.model.dims == [10, 20, 30, 40] and cfg.med.evolutionary is False
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert Config.from_yaml(path) == cfg


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"train": {"lrr": 1}}, r"unknown key 'train.lrr'; closest: 'train.lr'"),
        ({"train": {"epochs": "ten"}}, r"train.epochs must be an integer"),
        ({"train": {"epochs": 0}}, r"train.epochs must be at least 1"),
        ({"model": {"name": "transh"}}, r"model.name must be one of"),
        ({"model": {"dims": [10, 5]}}, r"model.dims: dims must be strictly increasing"),
        ({"loss": {"kind": "hinge"}}, r"loss.kind must be one of"),
        ({"med": {"mutual_learning": "yes"}}, r"med.mutual_learning must be true or false"),
        ({"eval": {"metric": "mrr@7"}}, r"eval.metric 'mrr@7'"),
        ({"model": 3}, r"model must be a mapping"),
    ],
)
def test_invalid_values_fail_with_the_key(data, message):
    with pytest.raises(MedkgeError, match=message):
        Config.from_dict(data)


def test_every_option_is_documented():
    rows = describe()
    assert len(rows) == len(all_keys()) > 30
    assert all(help_text for _, _, help_text in rows)


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(MedkgeError, match="not valid YAML"):
        Config.from_yaml(path)
    path.write_text("- a list\n")
    with pytest.raises(MedkgeError, match="must be a mapping"):
        Config.from_yaml(path)


def test_shipped_configs_are_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).parent.parent / "configs").glob("**/*.yaml"))
    assert configs
    for path in configs:
        Config.from_yaml(path)
