"""Binary index export, bundles and the two-stage Retriever (imported as ``hashrec.index``).

Public API (imports are lazy-free but light: faiss is loaded on first use of these names)::

    from hashrec.index import load_bundle, Retriever, build_bundle, export_run
"""

from __future__ import annotations

import logging
from typing import Any

# faiss's loader logs three INFO lines about CPU-specific builds it tries on every import; they are noise
# in CLI output (the build it loads dispatches to AVX2/AVX-512 at run time anyway)
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

__all__ = [
    "Bundle",
    "BundleError",
    "FoldIn",
    "FoldInUnavailable",
    "Recommendation",
    "Retriever",
    "build_bundle",
    "export_run",
    "load_bundle",
    "resolve_bundle_dir",
]

_WHERE = {
    "Bundle": "bundle",
    "BundleError": "bundle",
    "FoldIn": "bundle",
    "load_bundle": "bundle",
    "resolve_bundle_dir": "bundle",
    "build_bundle": "export",
    "export_run": "export",
    "FoldInUnavailable": "retriever",
    "Recommendation": "retriever",
    "Retriever": "retriever",
}


def __getattr__(name: str) -> Any:
    # lazy: `hashrec --help` imports hashrec.index.cli, which must not pull in faiss
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(name)
