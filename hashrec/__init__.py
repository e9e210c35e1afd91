"""hashrec: HashGNN learning-to-hash retrieval as a two-stage recall/rank recommender.

Packages (each a folder of the repository, mapped into this namespace by pyproject.toml):

- ``hashrec.model``   data loading, the HashGNN model, training and evaluation (``model/``)
- ``hashrec.index``   bundle export, FAISS binary index and the two-stage Retriever (``index/``)
- ``hashrec.service`` the FastAPI recommendation service (``service/``)
- ``hashrec.bench``   benchmark commands (``bench/``)
"""

__version__ = "0.1.0"
