"""medkge: croppable knowledge graph embeddings (MED, ACL 2025).

Train one model whose first d coordinates are a working d-dimensional model for every d in a list,
evaluate all of them in one pass, and crop the size a device can hold: ``medkge.load(path)`` opens a run or a
cropped model for prediction by label.
"""

from .config import Config
from .datasets import Dataset, list_datasets, load_dataset
from .deploy import LabelledModel, load
from .errors import MedkgeError
from .evaluation import Metrics, evaluate
from .methods import resume, train
from .model import DEFAULT_DIMS, CroppableModel
from .run import Run
from .scoring import MODELS

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_DIMS",
    "MODELS",
    "Config",
    "CroppableModel",
    "Dataset",
    "LabelledModel",
    "MedkgeError",
    "Metrics",
    "Run",
    "evaluate",
    "list_datasets",
    "load",
    "load_dataset",
    "resume",
    "train",
]
