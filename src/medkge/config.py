"""The one configuration: every option with its type, default and help, in one place.

A run's configuration is read from YAML (``medkge train config.yaml``), overridden on the command
line (``--set train.lr=0.01`` or the common flags), validated at once (a bad value fails at start with
a message naming the key) and saved, fully resolved, as ``config.yaml`` in the run folder.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import MedkgeError, brief, closest
from .layout import CONFIG_FILE
from .model import DEFAULT_DIMS
from .scoring import MODELS, check_dims, get_interaction

MAX_DIMS = 4096  # sub-models of one model (64 by default)
MAX_WIDTH = 1 << 16  # coordinates of the widest sub-model


def _opt(default: Any, help: str, **kwargs: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class ModelConfig:
    name: str = _opt("rotate", "scoring model", choices=MODELS)
    dims: list[int] = _opt(
        list(DEFAULT_DIMS),
        f"sub-model dimensions, increasing, at most {MAX_DIMS:,} of them and the widest at most {MAX_WIDTH:,}; also "
        "'start:stop:step' or '10,40,160,640'",
    )
    gamma: float = _opt(6.0, "margin of the distance models (TransE, RotatE, PairRE), of the widest sub-model")
    gamma_scaling: Literal["linear", "sqrt", "none"] = _opt(
        "sqrt",
        "sub-model i's margin: gamma * sqrt(d_i / d_n) (sqrt: near the margin a model of each width does best with "
        "alone), gamma * d_i / d_n (linear: the default before 2026-12-07) or gamma for every sub-model (none); a "
        "DT model of dim d gets the margin MED's d-dim sub-model has",
    )
    p: int = _opt(1, "TransE's norm: 1 or 2", choices=(1, 2))
    normalize_entities: bool | None = _opt(None, "unit-norm entity rows (default: PairRE yes, others no)")
    init_scale: float | None = _opt(
        None, "entries start uniform in +-init_scale (default (gamma+2)/D, 0.1 bilinear)", gt=0.0
    )
    phase_scale: float | None = _opt(
        10.0,
        "RotatE: phase = stored value * phase_scale, phases starting uniform in [-pi, pi]; an Adam step moves a "
        "phase by about lr * phase_scale rad at any width. null: pi / init_scale (RotatE's code; its phase step "
        "grows with the width, docs/choices.md)",
        gt=0.0,
    )


@dataclass
class LossConfig:
    kind: Literal["self_adversarial", "softplus", "margin"] = _opt(
        "self_adversarial",
        "base loss: RotatE's self-adversarial logistic loss, logistic with uniform negatives, or margin ranking",
    )
    alpha: float = _opt(1.0, "adversarial temperature of self_adversarial (0 = uniform negatives)", min=0.0)
    margin: float = _opt(1.0, "margin of the margin-ranking loss", min=0.0)
    regularizer: Literal["none", "l2", "n3"] = _opt(
        "none", "penalty on the batch's embeddings (RotatE: the entities only, a rotation's modulus being one)"
    )
    subsampling: bool = _opt(
        False,
        "weight each positive and its negatives by 1 / sqrt(count(h, r) + count(t, r^-1)) in the training triples "
        "(RotatE's subsampling weights, counts starting at 4 as in its code): frequent patterns count less",
    )
    reg_weight: float = _opt(0.0, "weight of the regularizer", min=0.0)
    reg_angles: bool = _opt(
        False,
        "also penalise RotatE's relation angles, as runs before 2026-12-07 did (they resume so); it does not "
        "shrink a rotation, it pulls it towards the identity. Models whose relations are not angles ignore it",
    )


@dataclass
class MedConfig:
    mutual_learning: bool = _opt(True, "Huber loss between neighbouring sub-models' sigmoid scores (ML)")
    evolutionary: bool = _opt(
        False,
        "sub-model i weights triples by what sub-model i-1 got wrong (EI; off: it measured worse, docs/choices.md)",
    )
    dynamic_weights: bool = _opt(True, "weight sub-model i's hard loss by exp(w3 * d_i / d_n) (DLW)")
    weights: Literal["fixed", "learn"] = _opt("fixed", "keep w1, w2, w3 at their values or learn them with Adam")
    w1: float = _opt(1.0, "EI positive-weight scale: softmax over the batch of w1 * f(q) (ei_positives)")
    w2: float = _opt(1.0, "EI negative-weight temperature: softmax over a row of w2 * sigmoid(s) or w2 * s")
    w3: float = _opt(1.0, "DLW exponent scale")
    pos_temperature: float = _opt(
        1.0, "divides the EI positive logits w1 * f(q) before the softmax (1 = the paper)", min=1e-6
    )
    ei_positives: Literal["paper-literal", "power", "error", "uniform"] = _opt(
        "paper-literal",
        "EI positive weights, a softmax over the batch of w1 * f(q) / pos_temperature, q = sigmoid of sub-model "
        "i-1's score: f = 1/q (paper-literal), -log q (power: weights ~ q^(-w1/T)), 1 - q (error: bounded), or uniform",
    )
    ei_negatives: Literal["paper-literal", "raw", "own"] = _opt(
        "paper-literal",
        "EI negative weights: softmax_k(w2 * sigmoid(s)) of sub-model i-1 (paper-literal), softmax_k(w2 * s) of "
        "sub-model i-1 (raw: RotatE's self-adversarial weights from the smaller neighbour), or each sub-model's own",
    )


@dataclass
class DistillConfig:
    teacher: str | None = _opt(
        None,
        "bkd/dualde: run folder whose largest-dim model is the teacher (default: train one in the run, "
        "as DT trains its largest model)",
    )
    soft_weight: float = _opt(1.0, "bkd: weight of the Huber term between student and teacher sigmoid scores", min=0.0)
    stage1_fraction: float = _opt(
        0.5, "dualde: share of train.epochs in stage 1 (teacher frozen); the rest is stage 2", min=0.0, max=1.0
    )
    teacher_lr_scale: float = _opt(0.1, "dualde: the teacher's learning rate in stage 2, relative to train.lr", min=0.0)


@dataclass
class TrainConfig:
    epochs: int = _opt(100, "maximum number of epochs", min=1)
    batch_size: int = _opt(1024, "positive triples per batch", min=1)
    negatives: int = _opt(64, "negatives per positive", min=1)
    corruption: Literal["uniform", "bernoulli"] = _opt(
        "uniform", "corrupt head or tail with probability 1/2, or by relation (Bernoulli, Wang et al. 2014)"
    )
    filter_negatives: bool = _opt(False, "resample negatives that are known training triples")
    shared_negatives: int = _opt(
        0,
        "positives per chunk that share one set of train.negatives sampled entities (PyTorch-BigGraph's and "
        "DGL-KE's batched negatives: far fewer rows per step; changes results); 0: each positive its own",
        min=0,
    )
    optimizer: Literal["auto", "adam", "sparse_adam", "row_adagrad"] = _opt(
        "auto",
        "entity table optimiser: adam (dense, fused), sparse_adam (Adam on the rows a step touches), row_adagrad "
        "(one accumulator per row and sub-model block); auto: adam on small graphs, sparse_adam on large ones, "
        "row_adagrad where Adam's state does not fit (benchmarks/scale.py). Every path (one process or many) runs "
        "every optimiser; a named one is never replaced",
    )
    memory_budget: int | None = _opt(
        None, "bytes training may use (default: the memory available at start); larger runs are refused", min=1
    )
    lr: float | None = _opt(
        None,
        "learning rate; null: the entity optimiser's own default (adam, sparse_adam 0.01; row_adagrad 0.1, lower "
        "where a step touches each entity many times: docs/optimizers.md). A run folder records the rate it used",
        gt=0.0,
    )
    lr_schedule: Literal["linear", "step", "constant"] = _opt(
        "linear",
        "decay the learning rate linearly to 0 over the run, divide it by 10 half way (step: RotatE's), or not",
    )
    device: str = _opt("cpu", "cpu, cuda, cuda:N or auto")
    seed: int = _opt(0, "seed of initialisation, shuffling and negative sampling")
    checkpoint_every: int = _opt(1, "epochs between checkpoints (0: only at the end)", min=0)
    tune_malloc: bool = _opt(True, "tell glibc to keep freed memory for reuse (much faster steps on CPU)")
    flush_denormals: bool = _opt(
        True, "flush subnormal floats to zero on the CPU (saturated scores made steps up to 5x slower without it)"
    )
    fused_kernels: bool = _opt(
        True,
        "fused training kernels (MED's closed-form gradient, lean scoring backward, fused Adam); false: the plain "
        "autograd reference they are tested against (same results to float rounding, slower)",
    )
    threads: int | None = _opt(
        None, "torch CPU threads (default: torch's choice); more than the cores present are cut to them", min=1
    )


@dataclass
class EvalConfig:
    every: int = _opt(10, "epochs between validations (0: never; the last model is kept)", min=0)
    metric: str = _opt("mean_mrr", "early-stopping metric: mean_mrr (over sub-models) or e.g. mrr@640, hits@10@40")
    patience: int = _opt(5, "validations without improvement before stopping (0: never stop early)", min=0)
    valid_dims: list[int] | None = _opt(
        None,
        "the sub-models validated during training (default: all), e.g. 10,40,160: early stopping reads these "
        "(the sizes you will deploy), and the kept model is validated at every dim once, for the record. One pass "
        "scores all of them, so the cost is set by the widest (10,40,160 of 10:640:10: 0.37x the 640-d one) (DT, "
        "BKD, DualDE: each model validates its own dim)",
    )
    ties: Literal["realistic", "optimistic", "pessimistic"] = _opt("realistic", "rank of the true entity among ties")
    protocol: Literal["full", "sampled"] = _opt(
        "full",
        "full: rank the true entity among all entities; sampled: among eval.sampled_candidates corrupted entities "
        "per query and side, drawn once (ogbl-wikikg2's protocol, for graphs too large to rank fully); both filtered",
    )
    valid_protocol: Literal["same", "full", "sampled"] = _opt(
        "same",
        "protocol of the validations during training: same (eval.protocol), full, or sampled (a cheap early-"
        "stopping signal where full validation costs more than the epochs between; the test keeps eval.protocol)",
    )
    sampled_candidates: int = _opt(
        1000,
        "sampled protocol: distinct candidates per query and side, drawn without replacement (as many as there are "
        "entities or more: every entity is ranked, the full protocol, with a warning)",
        min=1,
    )
    sampled_seed: int = _opt(
        0, "sampled protocol: seed of the candidate sets (the same sets at every validation); of eval.valid_triples too"
    )
    valid_triples: int | None = _opt(
        None,
        "validate during training on this many validation triples, drawn once (eval.sampled_seed), with the "
        "validation protocol: the full protocol's numbers at a fraction of its cost, where the sampled protocol "
        "would not rank models as the full one does (WN18RR); null: all of them",
        min=1,
    )
    memory_budget: int | None = _opt(None, "bytes per block of scores in evaluation (default: per device)", min=1)
    test: bool = _opt(True, "evaluate the kept model on the test split at the end")


@dataclass
class Config:
    dataset: str = _opt("kinships", "bundled dataset name or a folder of train/valid/test files")
    drop_unseen: bool = _opt(
        False,
        "drop valid/test triples whose entities or relation do not occur in train (default: keep them, ranked "
        "with untrained embeddings, as the ConvE and RotatE evaluations did)",
    )
    method: Literal["med", "dt", "bkd", "dualde"] = _opt(
        "med",
        "med: one croppable model (MED); dt: one independent model per dim; bkd, dualde: one student per dim "
        "distilled from a teacher of the largest dim",
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    med: MedConfig = field(default_factory=MedConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    # ---- reading and writing ------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Config:
        config = _build(cls, data or {}, "")
        config.validate()
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> Config:
        return cls.from_dict(_read_yaml(path))

    @classmethod
    def from_run_folder(cls, folder: str | Path) -> Config:
        """The config a run folder trained with. A run folder's config.yaml holds every option of its
        time; an option added since gets the value that reproduces how that run trained, not today's default."""
        path = Path(folder) / CONFIG_FILE
        data = _read_yaml(path) or {}
        for (section, key), value in _RUN_FOLDER_LEGACY.items():
            if isinstance(data.get(section), dict) and key not in data[section]:
                data[section][key] = value(data) if callable(value) else value
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=120)

    def with_overrides(self, overrides: dict[str, Any]) -> Config:
        """A copy with dotted keys (``train.lr``) set; values may be YAML strings ("1e-3", "[10, 20]")."""
        data = self.to_dict()
        for key, value in overrides.items():
            if isinstance(value, str):
                value = _parse_value(value)
            node = data
            parts = key.split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise MedkgeError(f"config: unknown key {brief(key)}{_closest_key(key)}")
                node = node[part]
            if parts[-1] not in node:
                raise MedkgeError(f"config: unknown key {brief(key)}{_closest_key(key)}")
            node[parts[-1]] = value
        return Config.from_dict(data)

    def validate(self) -> None:
        """Cross-field checks (per-field types, choices and ranges are checked when building)."""
        self.model.dims = checked_dims(self.model.dims)
        _, metric_dim = parse_metric(self.eval.metric, self.model.dims)
        if self.eval.valid_dims is not None:
            self.eval.valid_dims = sorted(set(self.eval.valid_dims))
            unknown = [d for d in self.eval.valid_dims if d not in self.model.dims]
            if not self.eval.valid_dims:
                raise MedkgeError("config: eval.valid_dims is empty (leave it unset to validate every sub-model)")
            if unknown:
                raise MedkgeError(
                    f"config: eval.valid_dims: {brief(unknown)} not among model.dims ({brief(self.model.dims)})"
                )
            if metric_dim is not None and metric_dim not in self.eval.valid_dims and self.method == "med":
                raise MedkgeError(
                    f"config: eval.metric {brief(self.eval.metric)} reads a dim eval.valid_dims leaves out"
                )
        if get_interaction(self.model.name, self.model.p).uses_gamma and self.model.gamma <= 0:
            raise MedkgeError(
                f"config: model.gamma must be positive for {self.model.name} (its margin), got {self.model.gamma}"
            )
        if self.train.shared_negatives and self.train.filter_negatives:
            raise MedkgeError("config: train.filter_negatives cannot filter shared negatives (train.shared_negatives)")
        if self.method == "dualde" and self.train.optimizer in ("sparse_adam", "row_adagrad"):
            raise MedkgeError("config: dualde trains its teacher in stage 2 densely: use train.optimizer adam or auto")
        if self.loss.subsampling and self.method == "dualde":
            raise MedkgeError("config: loss.subsampling is not part of dualde's loss (med, dt and bkd have it)")
        if self.loss.subsampling and self.method == "med" and self.med.evolutionary:
            raise MedkgeError("config: loss.subsampling with med.evolutionary: EI weights the positives itself")
        if self.method == "dualde" and self.loss.kind == "margin":
            raise MedkgeError("config: method dualde mixes logistic hard and soft terms: loss.kind cannot be margin")


# Short names accepted by medkge.train(...) and as command-line flags, for the options set most often.
ALIASES = {
    "dataset": "dataset",
    "method": "method",
    "model": "model.name",
    "dims": "model.dims",
    "gamma": "model.gamma",
    "epochs": "train.epochs",
    "lr": "train.lr",
    "batch_size": "train.batch_size",
    "negatives": "train.negatives",
    "seed": "train.seed",
    "device": "train.device",
    "eval_every": "eval.every",
    "patience": "eval.patience",
}


def parse_metric(metric: str, dims: list[int]) -> tuple[str, int | None]:
    """Split an early-stopping metric into (metric, dim): "mean_mrr" -> ("mrr", None), "mrr@40" -> ("mrr", 40)."""
    if metric.startswith("mean_"):
        name, dim = metric[len("mean_") :], None
    else:
        name, _, dim_text = metric.rpartition("@")
        try:
            dim = int(dim_text)
        except ValueError:
            dim = -1
        if dim not in dims:
            raise MedkgeError(
                f"config: eval.metric {brief(metric)}: expected mean_<metric> or <metric>@<one of the dims>"
            )
    if name not in ("mrr", "mr", "hits@1", "hits@3", "hits@10"):
        raise MedkgeError(f"config: eval.metric {brief(metric)}: unknown metric {brief(name)}")
    return name, dim


def all_keys() -> list[str]:
    """Every dotted key of the configuration."""
    return [key for key, _, _ in describe()]


def _closest_key(key: str) -> str:
    """The ", closest: ..." hint for an unknown key: the sections and keys at its level first (a misspelt
    section ``trian`` suggests ``train``, not ``train.lr``), else any dotted key."""
    level = key.rpartition(".")[0]
    level = level + "." if level else ""
    siblings = sorted({level + k[len(level) :].split(".")[0] for k in all_keys() if k.startswith(level)})
    return closest(key, siblings) or closest(key, all_keys())


def describe() -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) for every option: the documentation of the configuration."""
    rows = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                rows.append((prefix + f.name, default, f.metadata.get("help", "")))

    walk(Config, "")
    return rows


class _Loader(yaml.SafeLoader):
    """YAML with 1.2's numbers: 5e-4 is a float and 10:640:10 is a string, not a base-60 integer.

    A key given twice in one mapping is an error (YAML would keep the last silently), and so is an alias
    (``*name``): a config has no use for them, and nested aliases expand exponentially (a 300-byte file
    into billions of items)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"an alias (*{brief(event.anchor, 40)[1:-1]}): configs take no aliases", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # a complex key: not one of a config's
            key = self.construct_object(key_node, deep=deep)
            if key in first:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"{brief(key, 60)} is given twice (first on line {first[key] + 1})",
                    key_node.start_mark,
                )
            first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+)$"), list("-+0123456789")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?|[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


class _Dumper(yaml.SafeDumper):
    """Never writes aliases (the loader refuses them), even for a value that occurs twice."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def _parse_value(text: str) -> Any:
    try:
        return _yaml_load(text)
    except yaml.YAMLError:
        return text


# Options added after run folders were written, with the value that trains as those runs did (or a function of
# the folder's config that gives it, where the old behaviour changed before the option was added).
_RUN_FOLDER_LEGACY: dict[tuple[str, str], Any] = {
    ("model", "phase_scale"): None,  # before: RotatE's phase_scale was always pi / init_scale
    ("model", "gamma_scaling"): "linear",  # before: every sub-model's margin was gamma * d_i / d_n
    # before efc8df1 (which also added eval.valid_triples): N3 / L2 took RotatE's relation angles in too;
    # folders written after it and before the option trained without them
    ("loss", "reg_angles"): lambda data: "valid_triples" not in (data.get("eval") or {}),
}


def _read_yaml(path: str | Path) -> Any:
    try:
        data = _yaml_load(Path(path).read_text())
    except OSError as error:
        raise MedkgeError(f"{path}: cannot read ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise MedkgeError(f"{path}{where}: not valid YAML ({problem})") from None
    if data is not None and not isinstance(data, dict):
        raise MedkgeError(f"{path}: a config file must be a mapping of keys to values")
    return data


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise MedkgeError(f"config: {prefix.rstrip('.') or 'the config'} must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            full = prefix + str(key)
            raise MedkgeError(f"config: unknown key {brief(full)}{_closest_key(full)}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        key = prefix + f.name
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            values[f.name] = _build(hint, data[f.name] or {}, key + ".")
        else:
            values[f.name] = _coerce(key, data[f.name], hint, f.metadata)
    return cls(**values)


def _coerce(key: str, value: Any, hint: Any, meta: dict) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if key in ("model.dims", "eval.valid_dims"):
        return _coerce_dims(value, key)
    if origin is Literal:
        if value not in args:
            raise MedkgeError(f"config: {key} must be one of {', '.join(map(str, args))}; got {brief(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise MedkgeError(f"config: {key} must be a list, got {brief(value)}")
        return [_coerce(key, v, args[0], {}) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise MedkgeError(f"config: {key} must be true or false, got {brief(value)}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MedkgeError(f"config: {key} must be an integer, got {brief(value)}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MedkgeError(f"config: {key} must be a number, got {brief(value)}")
        value = float(value)
    elif hint is str and not isinstance(value, str):
        raise MedkgeError(f"config: {key} must be a string, got {brief(value)}")
    if "choices" in meta and value not in meta["choices"]:
        raise MedkgeError(f"config: {key} must be one of {', '.join(map(str, meta['choices']))}; got {brief(value)}")
    if "gt" in meta and value <= meta["gt"]:
        raise MedkgeError(f"config: {key} must be greater than {meta['gt']}, got {brief(value)}")
    if "min" in meta and value < meta["min"]:
        raise MedkgeError(f"config: {key} must be at least {meta['min']}, got {brief(value)}")
    if "max" in meta and value > meta["max"]:
        raise MedkgeError(f"config: {key} must be at most {meta['max']}, got {brief(value)}")
    return value


def _coerce_dims(value: Any, key: str = "model.dims") -> list[int]:
    """dims as a list, a 'start:stop:step' range (stop included) or a comma-separated string; their number
    and the widest are checked before any list is built (1:100000000:1 is refused at once)."""
    if isinstance(value, int) and not isinstance(value, bool):
        _check_dims_size(1, value)
        return [value]
    if isinstance(value, str):
        text = value.strip().strip("[]")
        try:
            if ":" in text:
                start, stop, *step = (int(x) for x in text.split(":", 2))
                if step and step[0] < 1:
                    raise MedkgeError(f"config: {key}: the step of {brief(value)} must be positive")
                by = step[0] if step else 1
                count = max(0, (stop - start) // by + 1)  # arithmetic: no list is built before the checks
                _check_dims_size(count, start + (count - 1) * by)
                return list(range(start, stop + 1, by))
            items = [x for x in text.replace(" ", ",").split(",") if x]
            _check_dims_size(len(items), 0)
            return [int(x) for x in items]
        except MedkgeError:
            raise
        except ValueError:
            raise MedkgeError(f"config: {key}: cannot read {brief(value)} as dims") from None
    if isinstance(value, list | tuple) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        _check_dims_size(len(value), max(value, default=0))
        return list(value)
    raise MedkgeError(f"config: {key} must be a list of integers, got {brief(value)}")


def _check_dims_size(count: int, widest: int) -> None:
    if count > MAX_DIMS:
        raise MedkgeError(f"config: model.dims: {count:,} sub-models; at most {MAX_DIMS:,}")
    if widest > MAX_WIDTH:
        raise MedkgeError(f"config: model.dims: a dim of {widest:,}; at most {MAX_WIDTH:,}")


def checked_dims(value: Any) -> list[int]:
    """Dims from any form :func:`_coerce_dims` reads, checked (positive, increasing, within the maxima)."""
    dims = _coerce_dims(value)
    try:
        return list(check_dims(dims))
    except MedkgeError as error:
        reason = str(error) if len(str(error)) <= 200 else str(error)[:197] + "..."
        raise MedkgeError(f"config: model.dims: {reason}") from None
