"""Bundles, the FAISS binary index and the two-stage Retriever (imported as ``hashrec.index``).

Modules: :mod:`.binary_index` (FAISS indexes over item codes), :mod:`.bundle` (the versioned format and its
loader), :mod:`.publish` (write, publish, prune versions), :mod:`.retriever` (recall + re-rank). This
package builds on :mod:`hashrec.data` only; it never imports the model (docs/architecture.md).
"""

import logging

# faiss's loader logs three INFO lines about CPU-specific builds it tries on every import; they are noise
# in CLI output (the build it loads dispatches to AVX2/AVX-512 at run time anyway)
logging.getLogger("faiss.loader").setLevel(logging.WARNING)
