"""hashrec: HashGNN learning-to-hash retrieval as a two-stage recall/rank recommender.

Packages (each a folder of the repository, mapped into this namespace by pyproject.toml):

- ``hashrec.data``    datasets, id maps and the binary code format: the layer the others share
- ``hashrec.index``   bundles, the FAISS binary index and the two-stage Retriever (``index/``)
- ``hashrec.model``   the HashGNN model, training, evaluation and export (``model/``)
- ``hashrec.service`` the FastAPI recommendation service (``service/``)

Imports flow one way: data <- index <- model; data <- index <- service; the CLI on top
(docs/architecture.md).
"""

__version__ = "0.1.0"
