"""The low layer every stage shares: datasets (readers, id maps, splits, graphs) and the binary code format.

Nothing here imports the rest of hashrec: ``hashrec.index``, ``hashrec.model`` and ``hashrec.service`` all
build on it (docs/architecture.md).

The names below load on first use (PEP 562): a serving process or ``hashrec bundle verify`` needs the id map
and the errors, not the dataset readers and their scipy import (about 0.3 s of every process start).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .dataset import DataConfig, Dataset, Interactions, load_dataset
    from .errors import DataError, DataFormatError, UserError
    from .graph import BipartiteGraph
    from .ids import IdMap

_WHERE = {
    "DataConfig": "dataset",
    "Dataset": "dataset",
    "Interactions": "dataset",
    "load_dataset": "dataset",
    "DataError": "errors",
    "DataFormatError": "errors",
    "UserError": "errors",
    "BipartiteGraph": "graph",
    "IdMap": "ids",
}

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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next look-up is a plain attribute
    return value
