"""Every file name of a run folder and of a cropped-model folder, and the operations on them, in one place.

The layout is documented once, in docs/formats.md; every other module asks this one for a path. A run folder
is marked by its config, written last when the run starts; a cropped (or exported) folder by its model.json.
"""

from __future__ import annotations

from pathlib import Path

# ---- a run folder ------------------------------------------------------------------------------------
CONFIG_FILE = "config.yaml"  # the full resolved configuration: its presence marks a run folder
MODEL_FILE = "model.safetensors"  # the kept model (MED: one croppable model); also a cropped folder's
MODELS_DIR = "models"  # the per-dim models of DT, BKD and DualDE runs
ENTITIES_FILE = "entities.tsv"  # vocabularies, id <TAB> label (run and cropped folders)
RELATIONS_FILE = "relations.tsv"
VOCAB_FILES = (ENTITIES_FILE, RELATIONS_FILE)
LOG_FILE = "metrics.jsonl"  # one JSON line per epoch and per validation
RESULTS_FILE = "results.json"  # final metrics, times, device, checksums: its presence marks a finished run
CHECKPOINT_FILE = "checkpoint.safetensors"  # the training state for --resume
CHECKPOINTS_DIR = "checkpoints"  # the checkpoints of a per-dim run's models and of a teacher
TEACHER_FILE = "teacher.safetensors"  # a distillation run's own teacher
SHARDS_DIR = "model-shards"  # the kept model of a run on several processes, one file of rows per rank,
SHARDS_MANIFEST = "relation.safetensors"  # and the relation table with the list of shards, written last
LOCK_FILE = ".medkge.lock"  # in a folder a medkge command is writing, while it writes

# ---- a cropped model folder (medkge crop, LabelledModel.save) and an export folder --------------------
INFO_FILE = "model.json"  # what the folder holds, where it came from (no local paths), its checksums
CARD_FILE = "README.md"  # the model card


def per_dim_model_path(folder: Path, dim: int) -> Path:
    """The kept model of ``dim`` in a run that trains one model per dim."""
    return Path(folder) / MODELS_DIR / f"dim_{dim}.safetensors"


def per_dim_checkpoint_path(folder: Path, dim: int, stage: str = "") -> Path:
    """The checkpoint of the model of ``dim`` (of one stage of DualDE) in a per-dim run."""
    return Path(folder) / CHECKPOINTS_DIR / f"dim_{dim}{'.' + stage if stage else ''}.safetensors"


def teacher_checkpoint_path(folder: Path) -> Path:
    return Path(folder) / CHECKPOINTS_DIR / TEACHER_FILE


def checkpoint_rows_dir(checkpoint_path: Path) -> Path:
    """Where the processes of a distributed run write their rows of a checkpoint: ``<checkpoint>.rows/``,
    one ``step-S/rank-R.safetensors`` per rank."""
    return checkpoint_path.with_name(checkpoint_path.stem + ".rows")


def rows_file(step_dir: Path, rank: int) -> Path:
    """Rank ``rank``'s rows of a checkpoint step, or (in SHARDS_DIR) of the kept model."""
    return step_dir / f"rank-{rank}.safetensors"


def has_progress(folder: Path) -> bool:
    """Whether a run folder holds anything training produced (a checkpoint, a model, a log line, results)."""
    folder = Path(folder)
    files = [folder / CHECKPOINT_FILE, folder / MODEL_FILE, folder / TEACHER_FILE, folder / RESULTS_FILE]
    if any(f.exists() for f in files):
        return True
    if any((folder / d).is_dir() and any((folder / d).iterdir()) for d in (CHECKPOINTS_DIR, MODELS_DIR)):
        return True
    return (folder / LOG_FILE).is_file() and (folder / LOG_FILE).stat().st_size > 0


def answer_files(folder: Path) -> list[Path]:
    """The files of a run folder that change its answers: the model files and the vocabularies (two labels
    swapped in entities.tsv swap the predictions)."""
    folder = Path(folder)
    files = [folder / MODEL_FILE, *sorted((folder / MODELS_DIR).glob("dim_*.safetensors"))]
    return [f for f in [*files, *(folder / name for name in VOCAB_FILES)] if f.is_file()]


def model_files(folder: Path) -> list[Path]:
    """The model files of a run folder: its croppable model, or its per-dim models."""
    folder = Path(folder)
    if (folder / MODEL_FILE).is_file():
        return [folder / MODEL_FILE]
    return sorted((folder / MODELS_DIR).glob("dim_*.safetensors"))


def create_run_folder(folder: Path, config_yaml: str, entities: list[str], relations: list[str]) -> None:
    """Write a new run's vocabularies, then its config: written last, its presence marks a run folder."""
    from .files import atomic_write, write_vocab

    folder = Path(folder)
    write_vocab(folder / ENTITIES_FILE, entities)
    write_vocab(folder / RELATIONS_FILE, relations)
    atomic_write(folder / CONFIG_FILE, config_yaml)


def remove_run_start(folder: Path) -> None:
    """Remove what a run's start wrote (its config, log and vocabularies), after a start that failed before
    any progress: the folder is left as it was found."""
    for name in (CONFIG_FILE, LOG_FILE, *VOCAB_FILES):
        (Path(folder) / name).unlink(missing_ok=True)
