"""Validation during training: Recall/NDCG@k of the three retrieval modes on a sample of validation users.

- ``continuous``: all-item ranking by ``<z_u, z_i>`` (:func:`hashrec.model.metrics.topk_by_score`);
- ``hamming``: ranking by the Hamming distance of ``sign(z)``, ties by smaller item id;
- ``hierarchical``: Hamming top-C (:func:`hashrec.index.search.hamming_topc`), then re-rank by ``<z_u, z_i>``
  (:func:`hashrec.index.search.rerank`): what the service does.

Training items are masked in every mode. Model selection uses ``hierarchical`` (``continuous`` for the
continuous baseline). Users are processed in batches: one matrix product per batch, no loop over users.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from hashrec.index.codes import to_signs
from hashrec.index.search import hamming_topc, rerank
from hashrec.model.metrics import recall_ndcg, topk_by_score


def sample_users(truth: sp.csr_matrix, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` users (sorted) that have validation items, chosen with ``seed`` (0 = all of them)."""
    have = np.flatnonzero(np.diff(truth.indptr) > 0)
    if n == 0 or n >= len(have):
        return have
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(have, n, replace=False))


def evaluate_modes(
    user_z: np.ndarray,
    item_z: np.ndarray,
    mask: sp.csr_matrix,
    truth: sp.csr_matrix,
    users: np.ndarray,
    k: int = 20,
    candidates: int = 1000,
    modes: tuple[str, ...] = ("continuous", "hamming", "hierarchical"),
    batch_size: int = 512,
) -> dict[str, float]:
    """``{"<mode>_recall": .., "<mode>_ndcg": ..}`` for the requested modes over ``users``.

    Args:
        user_z, item_z: float32 continuous codes of all users / items.
        mask: CSR [n_users, n_items] of items never to return (training items).
        truth: CSR [n_users, n_items] of held-out items (validation).
        users: int64 rows to evaluate (users without truth are skipped by the metric).
        k: cut-off; candidates: C of the hierarchical mode.
    """
    out: dict[str, float] = {}
    truth_rows = sp.csr_matrix(truth)[users]
    if "continuous" in modes:
        top = topk_by_score(user_z, item_z, k, mask_csr=mask, users=users)
        m = recall_ndcg(top, truth_rows, k)
        out["continuous_recall"], out["continuous_ndcg"] = m["recall"], m["ndcg"]
    if "hamming" in modes or "hierarchical" in modes:
        us, its = to_signs(user_z), to_signs(item_z)
        ham, hier = [], []
        mask = sp.csr_matrix(mask)
        for s in range(0, len(users), batch_size):
            b = users[s : s + batch_size]
            _, cand = hamming_topc(us[b], its, max(candidates, k), exclude=mask[b])
            ham.append(cand[:, :k])
            hier.append(rerank(user_z[b], item_z, cand[:, :candidates], k)[1])
        for name, parts in (("hamming", ham), ("hierarchical", hier)):
            if name in modes:
                m = recall_ndcg(np.concatenate(parts), truth_rows, k)
                out[f"{name}_recall"], out[f"{name}_ndcg"] = m["recall"], m["ndcg"]
    return out
