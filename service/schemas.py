"""Request and response models of the HTTP API (they are also its OpenAPI documentation)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# Raw ids are strings as the dataset wrote them. Reject what cannot be an id (empty, control characters,
# absurd lengths) so that junk gets a 422 naming the field instead of a silent miss.
# JSON Schema / pydantic semantics (``$`` = end of text). Python's ``re`` lets ``$`` match before a final
# newline, so Python code must use ``fullmatch`` with it (``abc\n`` is not an id).
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"
RawId = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=ID_PATTERN, strict=True)]

Source = Literal["model", "popular", "cache"]


class ScoredItem(BaseModel):
    """One recommended item."""

    item: str = Field(description="raw item id", examples=["1207"])
    score: float | None = Field(
        description="re-rank score (inner product of the continuous embeddings); for popularity "
        "fallbacks the item's interaction count",
        examples=[3.41],
    )
    hamming: int | None = Field(
        description="Hamming distance between the user's and the item's binary codes (null for popularity)",
        examples=[5],
    )


class Recommendation(BaseModel):
    """Top-k items for one user, and where they came from."""

    user: str = Field(description="the user id as asked", examples=["42"])
    version: str = Field(
        description="bundle (model) version that produced the answer", examples=["20260101-abc"]
    )
    source: Source = Field(
        description="model: Hamming recall + re-rank now; cache: the model's answer from the cache; "
        "popular: popularity fallback (see reason)"
    )
    reason: str | None = Field(default=None, description="why a fallback was used", examples=["unknown user"])
    k: int = Field(description="items asked for", examples=[20])
    candidates: int = Field(description="Hamming recall size C", examples=[500])
    items: list[ScoredItem]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user": "42",
                    "version": "20260101T000000-3f2a",
                    "source": "model",
                    "reason": None,
                    "k": 2,
                    "candidates": 500,
                    "items": [
                        {"item": "1207", "score": 3.41, "hamming": 5},
                        {"item": "88", "score": 3.12, "hamming": 7},
                    ],
                }
            ]
        }
    )


class NewUser(BaseModel):
    """A user the model has never seen, described by the items they interacted with."""

    # strict: a request body's numbers must be JSON numbers (no "5" or true for k), its flags JSON booleans
    model_config = ConfigDict(extra="forbid", strict=True)

    key: RawId = Field(
        description="the caller's name for this user, echoed back as `user`", examples=["guest-7"]
    )
    items: list[RawId] = Field(
        min_length=1, description="raw ids of items the user interacted with", examples=[["1207", "88"]]
    )


class BatchRequest(BaseModel):
    """Several users at once: known users by id, new users by their items."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "users": ["42", "7"],
                    "new_users": [{"key": "guest-7", "items": ["1207", "88"]}],
                    "k": 20,
                    "candidates": 500,
                    "exclude_seen": True,
                }
            ]
        },
    )

    users: list[RawId] = Field(default_factory=list, description="known user ids")
    new_users: list[NewUser] = Field(default_factory=list, description="users given as item lists")
    exclude_items: list[RawId] = Field(
        default_factory=list, description="raw item ids never recommended to any user of this request"
    )
    include_items: list[RawId] | None = Field(
        default=None,
        description="when given, only these raw item ids are recommended (the recall widens until k of them "
        "come back, when k exist); unknown ids in either filter are ignored and counted in `reason`",
    )
    k: int | None = Field(default=None, ge=1, description="items per user (default: the server's default_k)")
    candidates: int | None = Field(default=None, ge=1, description="Hamming recall size C")
    exclude_seen: bool = Field(default=True, description="drop items the user already interacted with")


class BatchResponse(BaseModel):
    """One Recommendation per user, known users first (in request order), then new users."""

    version: str
    results: list[Recommendation]


class ExportRequest(BaseModel):
    """Which users to export, and how many candidates each."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"users": ["42", "7"], "candidates": 100}, {"users": None}]},
    )

    users: list[RawId] | None = Field(default=None, description="user ids; null = every user of the bundle")
    candidates: int | None = Field(
        default=None, ge=1, description="candidates per user (default: default_candidates)"
    )
    exclude_seen: bool = True
    exclude_items: list[RawId] = Field(default_factory=list, description="raw item ids left out of every row")
    include_items: list[RawId] | None = Field(
        default=None, description="when given, the only raw item ids allowed"
    )


class ExportRow(BaseModel):
    """One NDJSON line of the export stream (items, scores and hamming are parallel arrays)."""

    user: str
    version: str
    items: list[str]
    scores: list[float]
    hamming: list[int]


class ExportEnd(BaseModel):
    """The last line of a complete export stream: a stream without it was cut short."""

    end: Literal[True] = True
    rows: int = Field(description="rows sent before this line")
    version: str
    unknown_filter_items: int = Field(default=0, description="ids in the filters the bundle does not know")


class ReloadRequest(BaseModel):
    """Which bundle version to load (default: the one `current` points to now)."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"version": None}]}
    )

    version: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")] | None = None


class ReloadResponse(BaseModel):
    """The outcome of a successful reload: this worker switched; how many of the replica's workers serve
    the version when the answer was sent (the others follow within ``HASHREC_BUNDLE_POLL_S``)."""

    previous: str
    version: str
    changed: bool
    pinned: bool = Field(description="the replica stays on this version until a reload without one")
    load_ms: float
    workers: int = Field(description="workers of this replica that reported in")
    workers_on_version: int


class Status(BaseModel):
    """A probe's answer."""

    status: Literal["ok", "unavailable", "draining"]
    version: str | None = None


class Health(BaseModel):
    """Details for humans and dashboards."""

    status: Literal["ok", "unavailable"]
    version: str | None
    loaded_at: str | None
    index_type: str | None
    bits: int | None
    items: int | None
    users: int | None
    foldin: bool | None
    cache: dict[str, object]
    uptime_s: float
