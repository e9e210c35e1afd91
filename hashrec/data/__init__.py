"""The low layer every stage shares: datasets (readers, id maps, splits, graphs) and the binary code format.

Nothing here imports the rest of hashrec: ``hashrec.index``, ``hashrec.model`` and ``hashrec.service`` all
build on it (docs/architecture.md).
"""

from .dataset import DataConfig, Dataset, Interactions, load_dataset
from .errors import DataError, DataFormatError, UserError
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
    "UserError",
    "load_dataset",
]
