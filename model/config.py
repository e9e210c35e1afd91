"""The training configuration: one typed, validated dataclass whose defaults are the default preset.

``TrainConfig.preset_config(name, data, **overrides)``:

- ``default`` = the dataclass defaults: our best per CPU-minute (docs/training.md says how each was chosen,
  on validation): a LightGCN-style propagation encoder over ID embeddings warm-started from a truncated SVD,
  64-bit codes from a code head and 64-d re-rank vectors from a re-rank head, a sampled softmax beside the
  paper's two losses, the code head distilled from the re-rank head, big batches, a cosine learning rate,
  then a refit on train + validation for the selected number of epochs, served together with the
  selected model (the sum of their re-rank scores);
- ``paper`` = :data:`PAPER`, a small override: the settings of HashGNN's official code, each commented.

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

PRESETS = ("paper", "default")

# Fields that change how fast or where a run goes, or what is exported from its checkpoints, not what it
# trains: a checkpoint stays valid when they change (``--resume --threads 4`` is fine). Everything else is
# part of the config fingerprint.
RUNTIME_FIELDS = frozenset({"device", "threads", "time_budget_min", "progress", "serve_both"})

_CHOICES: dict[str, tuple[Any, ...]] = {
    "preset": PRESETS,
    "encoder": ("lightgcn", "sage"),
    "guidance": ("example", "bit"),
    "negative_draw": ("shared", "own"),
    "ranking": ("bpr", "margin"),
    "rec_reduction": ("sum", "mean"),
    "lr_schedule": ("constant", "cosine"),
    "device": ("auto", "cpu", "cuda"),
}
_POSITIVE_INTS = (
    "emb_dim",
    "dense_dim",
    "rerank_dim",
    "batch_size",
    "epochs",
    "valid_every",
    "negatives",
    "select_k",
)
_NON_NEGATIVE_INTS = ("shared_negatives", "valid_users", "patience", "threads")
_POSITIVE_FLOATS = ("softmax_tau", "code_tau", "lr", "margin")
_WEIGHTS = ("rec_weight", "rank_weight", "softmax_weight", "distill_weight", "l2")
_FRACTIONS = ("pure_ste_at", "code_pure_ste_at")
_UNIT = ("code_grad_scale",)


class ConfigError(DataError):
    """A training configuration value is invalid. The message starts with the field name."""


# What the settings search may not change: the data, what the user asked for (code length, the continuous
# baseline, the seed), the selection protocol itself (so candidates are compared on equal terms), and runtime.
_NOT_TUNABLE = frozenset(
    {
        "data",
        "preset",
        "tune",
        "tune_max_min",
        "bits",
        "continuous",
        "seed",
        "epochs",
        "refit",
        "valid_every",
        "valid_users",
        "select_k",
        "select_candidates",
        "patience",
    }
    | RUNTIME_FIELDS
)


def parse_changes(text: str, what: str) -> dict[str, Any]:
    """``field=value[,field=value...]`` -> {field: value}; values are JSON where they parse (numbers, true,
    lists), else strings (``ranking=margin``). Raises ConfigError naming ``what`` for a malformed item."""
    changes: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what}: {item!r}: expected FIELD=VALUE")
        try:
            changes[key.strip()] = json.loads(value)
        except ValueError:
            changes[key.strip()] = value.strip()
    if not changes:
        raise ConfigError(f"{what}: {text!r}: expected FIELD=VALUE")
    return changes


# Fields added after runs existed, with the value those runs had: see TrainConfig.fingerprint.
_ADDED_FIELDS: dict[str, Any] = {"rerank_ste": True}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (the dataset config included). Defaults = the default preset.

    Encoder:
        encoder: ``lightgcn`` (propagation over the normalised adjacency) or ``sage`` (GraphSAGE, sampled).
        emb_dim: ID embedding size (lightgcn: also the propagated size fed to the heads).
        dense_dim: GraphSAGE dense layer and hidden size.
        layers: LightGCN propagation layers (the output is the mean over layers 0..L).
        user_fanouts / item_fanouts: GraphSAGE neighbours sampled per hop.
        svd_init: warm-start the ID embeddings from a truncated SVD of D_u^-1/2 R D_i^-1/2 (lightgcn).
    Heads and codes:
        bits: code length K (8..1024, a multiple of 8).
        rerank_head / rerank_dim: a separate re-rank head of this width (False: the code head's z re-ranks).
        continuous: train without codes (code probability 0): the continuous baseline.
        rerank_ste: with two heads, train the re-rank head on its guided codes (its sign, reaching pure STE
            at ``pure_ste_at``) like the one head; False trains it purely continuous, as it is served
            (worse on validation: docs/training.md).
        guidance: draw the "use the code" Bernoulli per ``example`` or per ``bit``.
        negative_draw: the example's negatives share its draw (``shared``) or draw their own (``own``).
        code_prob_start: probability of using the code at the start of training.
        pure_ste_at: progress (0..1) at which the (re-rank, or only) head reaches pure STE.
        code_pure_ste_at: the same for the code head when there are two heads.
        score_scale: scores are ``score_scale * <h_u, h_i> / K`` (None: raw inner products).
    Losses (each with its weight; 0 switches one off):
        negatives: uniform negatives per positive (reconstruction and ranking losses).
        rec_weight / rec_reduction: reconstruction cross-entropy of the positive and its negatives, summed
            or averaged over the 1 + M terms.
        rank_weight / ranking / margin: BPR (softplus) or margin (triplet hinge) loss.
        softmax_weight / softmax_tau / shared_negatives: softmax over the positive and ``shared_negatives``
            uniform items shared by the batch, logits ``<h_u, h_c>/(K tau)``; ``code_tau`` is the code head's,
            and ``code_negatives`` how many of the shared items its softmax and the distillation use.
        distill_weight: KL pulling the code head's softmax towards the re-rank head's continuous one.
        code_grad_scale: how much of the code head's gradient reaches the shared encoder (1 = all, 0 = none:
            the encoder then learns from the re-rank head alone and the code head projects its output).
        l2: L2 penalty on the ID embeddings of the batch (per example).
    Optimisation:
        lr, batch_size (edges), epochs (the most), seed.
        lr_schedule: ``constant`` or ``cosine`` (decays to 5% of lr over training progress, the same
            progress that drives the guidance schedules, so a time budget ends at the low learning rate).
    Validation, selection, refit:
        valid_every: validate every this many epochs (and at the last one).
        valid_users: validation users sampled once (0 = all).
        select_k / select_candidates: selection on hierarchical Recall@select_k with Hamming top-C.
        patience: stop after this many validations without improvement (0 = never stop early).
        refit: once the best epoch is known, train again on train + validation for that many epochs (same
            schedule, same seed) and serve that model.
        serve_both: with a refit, serve the refit and the selected model together: the refit's codes, the
            sum of both models' re-rank scores (their re-rank vectors side by side: ``dim`` doubles; chosen
            on validation, docs/training.md); False serves the refit alone.
        tune / tune_max_min: the settings search. After the run's own settings, each ``tune`` entry
            (``field=value[,field=value]``, over the run's settings) is trained and validated the same way,
            and the best validated candidate is refitted and served; the search runs only when the first
            candidate took at most ``tune_max_min`` minutes and each next one fits what is left of the
            selection's time budget (so it costs nothing on big data, where one run is all the budget holds).
            ``tune=[]`` switches it off.
    Runtime (not part of the fingerprint):
        time_budget_min: the whole run (selection, search and refit) ends within this wall time (None = no
            limit; the default preset's 30 minutes hold a full run on Gowalla on 2 cores).
        progress: show a tqdm progress bar on stderr.
        device: ``auto`` (cuda when available), ``cpu`` or ``cuda``; threads: torch CPU threads (0 = the
            cores this process may use, divided among the processes of a distributed run).
    """

    data: DataConfig
    preset: str = "default"
    encoder: Literal["lightgcn", "sage"] = "lightgcn"
    emb_dim: int = 64
    dense_dim: int = 68
    layers: int = 6
    user_fanouts: tuple[int, ...] = (10, 5)
    item_fanouts: tuple[int, ...] = (10,)
    svd_init: bool = True
    bits: int = 64
    rerank_head: bool = True
    rerank_dim: int = 64
    continuous: bool = False
    rerank_ste: bool = True
    guidance: Literal["example", "bit"] = "example"
    negative_draw: Literal["shared", "own"] = "shared"
    code_prob_start: float = 0.0
    pure_ste_at: float = 0.6
    code_pure_ste_at: float = 0.3
    score_scale: float | None = 8.0
    negatives: int = 4
    rec_weight: float = 0.1
    rec_reduction: Literal["sum", "mean"] = "sum"
    rank_weight: float = 0.1
    ranking: Literal["bpr", "margin"] = "bpr"
    margin: float = 1.0
    softmax_weight: float = 1.0
    softmax_tau: float = 0.05
    code_tau: float = 0.1
    code_negatives: int = 4096
    shared_negatives: int = 4096
    distill_weight: float = 1.0
    code_grad_scale: float = 1.0
    l2: float = 0.0
    lr: float = 0.01
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    batch_size: int = 8192
    epochs: int = 10
    seed: int = 0
    valid_every: int = 1
    valid_users: int = 0
    select_k: int = 20
    select_candidates: int = 1000
    patience: int = 0
    refit: bool = True
    serve_both: bool = True
    tune: tuple[str, ...] = ("softmax_tau=0.1", "lr=0.003")
    tune_max_min: float = 10.0
    time_budget_min: float | None = 30.0
    progress: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.data, DataConfig):
            raise ConfigError(f"data: expected a DataConfig, got {type(self.data).__name__}")
        for name in ("user_fanouts", "item_fanouts", "tune"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self._check_choices()
        self._check_numbers()
        self._check_structure()

    def _bad(self, name: str, why: str) -> ConfigError:
        return ConfigError(f"{name}: {why}, got {getattr(self, name)!r}")

    def _check_choices(self) -> None:
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise self._bad(name, f"expected one of {', '.join(map(str, choices))}")
        for f in dataclasses.fields(self):  # a switch is a real bool: "--set refit=maybe" is not silently on
            if f.type == "bool" and not isinstance(getattr(self, f.name), bool):
                raise self._bad(f.name, "expected true or false")

    def _check_numbers(self) -> None:
        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for names, low, what in ((_POSITIVE_INTS, 1, ">= 1"), (_NON_NEGATIVE_INTS, 0, ">= 0")):
            for name in names:
                if not is_int(getattr(self, name)) or getattr(self, name) < low:
                    raise self._bad(name, f"expected an integer {what}")
        self._check_floats()

    def _check_floats(self) -> None:
        for name in _POSITIVE_FLOATS:
            if isinstance(getattr(self, name), bool) or not getattr(self, name) > 0:
                raise self._bad(name, "expected a value > 0")
        for name in _WEIGHTS:
            if not getattr(self, name) >= 0:
                raise self._bad(name, "expected a weight >= 0")
        for name in _FRACTIONS:
            if not 0.0 < getattr(self, name) < 1.0:
                raise self._bad(
                    name, "expected a fraction in (0, 1) so that pure STE is reached before the end"
                )
        for name in ("code_prob_start", *_UNIT):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise self._bad(name, "expected a value in [0, 1]")
        if self.score_scale is not None and not self.score_scale > 0:
            raise self._bad("score_scale", "expected a value > 0 (or None for raw inner products)")
        if not self.tune_max_min >= 0:
            raise self._bad("tune_max_min", "expected minutes >= 0")
        if self.time_budget_min is not None and not self.time_budget_min > 0:
            raise self._bad("time_budget_min", "expected minutes > 0 (or None for no limit)")

    def _check_structure(self) -> None:
        if not isinstance(self.layers, int) or not 0 <= self.layers <= 8:
            raise self._bad("layers", "expected an integer in [0, 8]")
        for name in ("user_fanouts", "item_fanouts"):
            fan = getattr(self, name)
            if not fan or len(fan) > 3 or any(not isinstance(f, int) or f < 1 for f in fan):
                raise self._bad(name, "expected 1 to 3 positive integers")
        if not isinstance(self.bits, int) or not 8 <= self.bits <= 1024 or self.bits % 8:
            raise self._bad("bits", "expected a multiple of 8 in [8, 1024]")
        if self.select_candidates < self.select_k:
            raise self._bad("select_candidates", "expected an integer >= select_k")
        if self.softmax_weight > 0 and self.shared_negatives == 0:
            raise ConfigError("shared_negatives: the softmax loss needs shared negatives (> 0)")
        if self.rec_weight + self.rank_weight + self.softmax_weight == 0:
            raise ConfigError("rec_weight, rank_weight, softmax_weight: at least one loss needs a weight > 0")
        self.candidates()  # every settings-search candidate must be a valid config too

    # -- the settings search ------------------------------------------------------------------------------
    def candidates(self) -> list[tuple[str, TrainConfig]]:
        """The settings search's candidates, in order: ("", self) then (entry, self with the entry applied)
        for each ``tune`` entry. Raises ConfigError naming ``tune`` and the entry for a malformed entry, a
        field that is not tunable, or a value the field refuses."""
        out: list[tuple[str, TrainConfig]] = [("", self)]
        for entry in self.tune:
            changes = parse_changes(entry, "tune")
            fixed = sorted(set(changes) & _NOT_TUNABLE)
            if fixed:
                raise ConfigError(f"tune: {entry!r} sets {fixed[0]}, which the search may not change")
            try:
                out.append((entry, self.replace(tune=(), **changes)))
            except ConfigError as err:
                raise ConfigError(f"tune: {entry!r}: {err}") from err
            except TypeError as err:  # an unknown field
                raise ConfigError(f"tune: {entry!r}: {err}") from err
        return out

    # -- presets ------------------------------------------------------------------------------------------
    @classmethod
    def preset_config(cls, name: str, data: DataConfig, **overrides: Any) -> TrainConfig:
        """The named preset for ``data`` with ``overrides`` (any field) applied; validated.

        Raises ConfigError for an unknown preset or field, or a bad value.
        """
        if name not in PRESETS:
            raise ConfigError(f"preset: expected one of {', '.join(PRESETS)}, got {name!r}")
        base: dict[str, Any] = dict(PAPER) if name == "paper" else {}
        known = {f.name for f in dataclasses.fields(cls)}
        for key in overrides:
            if key not in known:
                raise ConfigError(f"{key}: unknown config field")
        base.update(
            {k: v for k, v in overrides.items() if v is not None or k in ("time_budget_min", "score_scale")}
        )
        return cls(data=data, preset=name, **base)

    # -- serialisation ------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict; :meth:`from_json` rebuilds an equal config."""
        d = asdict(self)
        d["data"] = self.data.to_json()
        d["user_fanouts"] = list(self.user_fanouts)
        d["item_fanouts"] = list(self.item_fanouts)
        d["tune"] = list(self.tune)
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
        # fields added after runs existed count only away from their default, so that those runs keep their
        # fingerprint (``--resume`` and the checkpoint checks compare it)
        for name, default in _ADDED_FIELDS.items():
            if d.get(name) == default:
                d.pop(name, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


# The official HashGNN settings (Tan et al., WWW 2020, and its code): only what differs from the defaults.
# One difference is on purpose: the guidance schedule reaches pure STE at 60% of training (pure_ste_at's
# default), where the official code (+0.02 every 2 epochs) never gets there in its 20 epochs.
PAPER: dict[str, Any] = dict(
    encoder="sage",  # GraphSAGE: users 2 hops with fan-outs (10, 5), items 1 hop with fan-out 10 (the defaults)
    emb_dim=120,  # ID embeddings 120-d, then a 68-d dense layer (dense_dim's default)
    svd_init=False,  # random initialisation
    bits=32,  # K = 32
    rerank_head=False,  # one hash layer: the continuous z re-ranks (hierarchical search)
    negative_draw="own",  # the negatives draw their own code/continuous selector
    score_scale=None,  # raw inner products of the codes
    negatives=10,  # 1 positive with 10 uniform negatives
    rec_reduction="mean",  # the reconstruction cross-entropy averaged over its 11 terms
    rank_weight=1.0,  # BPR on the codes is the main loss, reconstruction weighted 0.1 (rec_weight's default)
    softmax_weight=0.0,  # no sampled softmax (ours)
    shared_negatives=0,
    distill_weight=0.0,  # one head: nothing to distil
    lr=1e-3,  # Adam, lr 1e-3, constant
    lr_schedule="constant",
    batch_size=256,  # 256 edges per batch
    epochs=20,
    valid_every=2,  # validation is ours; every 2 epochs keeps its cost small beside 20 slow epochs
    valid_users=5000,
    refit=False,  # the paper trains once, on the training split
    tune=(),  # ... with one set of settings
    time_budget_min=None,  # ... for its 20 epochs, however long they take
)
