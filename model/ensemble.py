"""Serve two trained models as one: the refit model's codes, both models' re-rank scores summed.

The trainer ends with two models of the same settings: the selected one (``best.pt``, trained on the
training split) and the refit (``refit.pt``, trained again on train + validation). Their re-rank scores
differ in their errors, and their sum ranks better than either (docs/training.md, "Serving both models":
measured on validation with two training-split models). The sum needs no new serving path: it is the inner
product of concatenated re-rank vectors, ``<[a_u, b_u], [a_i, b_i]> = <a_u, a_i> + <b_u, b_i>``, so the
bundle simply carries wider vectors (``dim`` = the two widths added). The Hamming stage keeps the first
model's codes: the code length is the user's choice and does not grow.

Fold-in stays exact: each model pools its own item features with the same power, so the joined features
are the two side by side, the code head reads the first model's half only, and the re-rank head is
block-diagonal; ``tanh`` applies element-wise, so a folded-in user gets exactly ``[a_u, b_u]``.
"""

from __future__ import annotations

import numpy as np

from .run import FOLDIN_KEYS


def _vectors(arrays: dict[str, np.ndarray], side: str) -> np.ndarray:
    # a one-head model re-ranks with its code head's z
    return arrays.get(f"{side}_vectors", arrays[f"{side}_z"])


def join(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Embedding arrays (``HashGNN.embed_all`` + ``foldin``) of one model that scores as ``first + second``.

    Codes (``user_z``/``item_z``) are ``first``'s; ``user_vectors``/``item_vectors`` are ``[first, second]``.
    The fold-in arrays are joined when both have them (else dropped: a fold-in of one model alone would not
    match the joined vectors). Raises ValueError when the two models' shapes or fold-in powers differ.
    """
    out = {k: v for k, v in first.items() if k not in FOLDIN_KEYS}
    for side in ("user", "item"):
        a, b = _vectors(first, side), _vectors(second, side)
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"{side} rows differ: {a.shape[0]} vs {b.shape[0]}")
        out[f"{side}_vectors"] = np.hstack([a, b]).astype(np.float32)
    if all(k in first and k in second for k in FOLDIN_KEYS):
        out.update(_join_foldin(first, second))
    return out


def _join_foldin(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if float(first["foldin_power"]) != float(second["foldin_power"]):
        raise ValueError(
            f"fold-in powers differ: {float(first['foldin_power'])} vs {float(second['foldin_power'])}"
        )
    fa, fb = first["foldin_item"], second["foldin_item"]
    va, vb = first["foldin_vector_weight"], second["foldin_vector_weight"]
    code = first["foldin_code_weight"]
    return {
        "foldin_item": np.hstack([fa, fb]).astype(np.float32),
        "foldin_power": first["foldin_power"],
        "foldin_code_weight": np.hstack([code, np.zeros((code.shape[0], fb.shape[1]), np.float32)]),
        "foldin_code_bias": first["foldin_code_bias"],
        "foldin_vector_weight": np.block(
            [
                [va, np.zeros((va.shape[0], fb.shape[1]), np.float32)],
                [np.zeros((vb.shape[0], fa.shape[1]), np.float32), vb],
            ]
        ).astype(np.float32),
        "foldin_vector_bias": np.concatenate(
            [first["foldin_vector_bias"], second["foldin_vector_bias"]]
        ).astype(np.float32),
    }
