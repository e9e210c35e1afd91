"""Data layer: readers, id maps, splits, CSR graphs and the synthetic generator (``hashrec.model.data``)."""

from .dataset import DataConfig, Dataset, Interactions, load_dataset
from .errors import DataError, DataFormatError
from .graph import BipartiteGraph
from .ids import IdMap

__all__ = [
    "BipartiteGraph",
    "DataConfig",
    "DataError",
    "DataFormatError",
    "Dataset",
    "IdMap",
    "Interactions",
    "load_dataset",
]
