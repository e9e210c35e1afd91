"""Service settings: every option is an environment variable with the ``HASHREC_`` prefix.

Validated once, at start-up (``Settings()`` raises a ``pydantic.ValidationError`` naming the field), so a
bad value in a deployment fails the process before it accepts traffic instead of on the first request.
Unknown ``HASHREC_*`` variables are ignored (pydantic-settings' ``extra="ignore"``): a misspelt name
silently keeps the default, so compare names with this file when a setting seems to have no effect.

Examples: ``HASHREC_BUNDLES=/bundles``, ``HASHREC_REDIS_URL=redis://redis:6379/0``,
``HASHREC_ADMIN_TOKEN=...``, ``HASHREC_MAX_K=200``. ``hashrec serve`` flags override the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CacheBackend = Literal["auto", "redis", "memory", "none"]


def _cores() -> int:
    """The cores this process may run on (a container's CPU set), at least 1."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class Settings(BaseSettings):
    """Everything the service can be told. Defaults suit one process per container."""

    model_config = SettingsConfigDict(env_prefix="HASHREC_", extra="ignore", frozen=True)

    # -- bundle -----------------------------------------------------------------------------------------
    bundles: Path = Field(description="bundles directory (BUNDLES/<version>/, BUNDLES/current -> <version>)")
    bundle_version: str | None = Field(
        default=None, description="version to serve at start-up; default: whatever `current` points to"
    )

    bundle_mmap: bool = Field(
        default=False,
        description="memory-map the bundle's arrays instead of reading them into memory: for bundles "
        "larger than RAM or shared by many workers; reading is faster per request (no memmap indexing)",
    )

    # -- HTTP -------------------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(
        default_factory=_cores,
        ge=1,
        le=64,
        description="uvicorn worker processes (default: one per core this container may use); they all "
        "follow the published bundle and serve one version except during a switch",
    )
    runtime_dir: Path | None = Field(
        default=None,
        description="a directory private to this replica where its workers share admin reload requests and "
        "report the version they serve (`hashrec serve` makes one)",
    )
    bundle_poll_s: float = Field(
        default=2.0,
        ge=0,
        description="seconds between checks of the published `current` pointer (and of admin reloads); "
        "0 = never follow it",
    )
    lease_ttl_s: float = Field(
        default=60.0,
        gt=0,
        description="each worker leases the version it serves in BUNDLES/.leases (renewed every poll) so "
        "that pruning keeps it; a lease not renewed for this long is stale",
    )
    max_inflight: int = Field(
        default=64,
        ge=1,
        description="requests in progress per worker; past it, 503 with Retry-After at once (probes and "
        "metrics are never refused)",
    )
    request_timeout_s: float = Field(
        default=2.0, gt=0, description="a request whose model call has not started after this long gets 503"
    )
    retry_after_s: int = Field(default=1, ge=0, description="the Retry-After of a 503")
    limit_concurrency: int = Field(
        default=1024,
        ge=1,
        description="uvicorn's own cap on connections + tasks (a backstop above max_inflight; uvicorn answers "
        "it with a plain 503)",
    )
    keep_alive_s: float = Field(default=5.0, gt=0, description="idle keep-alive connections close after this")
    drain_s: float = Field(
        default=2.0,
        ge=0,
        description="on SIGTERM, /readyz answers 503 for this long before the server stops accepting, so a "
        "load balancer takes the replica out first; in-flight requests then finish",
    )
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="larger request bodies get 413")
    access_log: bool = Field(default=True, description="one JSON log line per request")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # -- answers ----------------------------------------------------------------------------------------
    default_k: int = Field(default=20, ge=1)
    max_k: int = Field(default=200, ge=1)
    default_candidates: int = Field(default=500, ge=1, description="Hamming recall size C")
    max_candidates: int = Field(default=5000, ge=1)
    unknown_user: Literal["popular", "404"] = Field(
        default="popular", description="unknown user ids: popularity fallback (marked) or 404"
    )
    max_batch_users: int = Field(default=1000, ge=1, description="users per POST /recommend")
    max_items_per_user: int = Field(default=1000, ge=1, description="items given for one new user")
    max_export_users: int = Field(default=1_000_000, ge=1, description="explicit users per export request")
    export_processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="child processes (per worker, at the lowest CPU priority) computing export streams: "
        "apart from the request threads and their GIL, so that a bulk export never holds online requests up",
    )
    # small steps keep the online p99 near its idle value while exports stream (each step's rows cross from
    # the export process and out of the event loop in one piece; 16 against 32: online p99 1.9x against
    # 3.1x its idle value, side by side): docs/benchmarks.md, Serving limits
    export_batch: int = Field(default=16, ge=1, le=100_000, description="users computed per export step")
    max_exports: int = Field(
        default=2, ge=1, description="exports streaming at once per worker; past it, 503"
    )

    # -- compute ----------------------------------------------------------------------------------------
    compute_threads: int = Field(
        default_factory=_cores,
        ge=1,
        le=256,
        description="threads running model calls (FAISS releases the GIL); each uses one BLAS/OpenMP thread",
    )
    inline_users: int = Field(
        default=16,
        ge=0,
        le=1000,
        description="model calls of at most this many users (the batch of concurrent requests) run on the "
        "event loop itself: cheaper and steadier than a hand-off to a compute thread for sub-millisecond "
        "calls; larger batches use the compute threads (0 = always the threads)",
    )

    gc_freeze: bool = Field(
        default=True,
        description="once start-up is done, move every object alive to the garbage collector's permanent "
        "generation (gc.freeze): a full collection then walks only what was created since, not the ~80,000 "
        "start-up objects (30-80 ms pauses that stalled every request in flight)",
    )

    # -- cache ------------------------------------------------------------------------------------------
    cache: CacheBackend = Field(
        default="auto", description="auto: Redis when redis_url is set, else the in-process LRU"
    )
    redis_url: str | None = None
    cache_ttl_s: float = Field(default=300.0, gt=0)
    cache_ttl_jitter: float = Field(
        default=0.2,
        ge=0,
        lt=1,
        description="each cached answer lives a TTL drawn from [ttl * (1 - jitter), ttl], so answers cached "
        "together do not all expire together",
    )
    cache_bytes: int = Field(
        default=64 << 20, ge=1 << 16, description="bytes of answers (keys included) in the in-process LRU"
    )
    near_cache_bytes: int = Field(
        default=16 << 20,
        ge=0,
        description="bytes of the in-process LRU kept in front of Redis (0 = every hit goes to Redis)",
    )
    cache_bypass_below: float = Field(
        default=0.02,
        ge=0,
        lt=1,
        description="while Redis's moving hit rate is below this (a cold cache, after a roll-out), look-ups "
        "read as misses without waiting for Redis and 1 in 8 probes it in the background; 0 = every look-up "
        "asks",
    )
    redis_timeout_s: float = Field(default=0.05, gt=0, le=10, description="socket + connect timeout")
    redis_pool_size: int = Field(default=32, ge=1)
    breaker_failures: int = Field(default=3, ge=1, description="consecutive failures that open the breaker")
    breaker_reset_s: float = Field(default=5.0, gt=0, description="seconds open before one trial call")

    # -- observability -----------------------------------------------------------------------------------
    quality_sample_rate: float = Field(
        default=0.01,
        ge=0.0,
        le=1.0,
        description="fraction of model answers also scored exactly (all items) to export their recall overlap "
        "(hashrec_recall_overlap); 0 = off",
    )

    # -- admin ------------------------------------------------------------------------------------------
    admin_token: SecretStr | None = Field(
        default=None, description="bearer token of POST /admin/reload; unset = endpoint disabled"
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="bearer token every endpoint but the probes (/livez, /readyz, /healthz, /metrics) and "
        "the admin one asks for; unset = open",
    )
    export_token: SecretStr | None = Field(
        default=None, description="bearer token of POST /candidates/export (default: api_token's rule)"
    )

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    @field_validator("admin_token", "api_token", "export_token")
    @classmethod
    def _check_token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or v.get_secret_value() == "":
            return None
        if len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (a guessable token is worse than none)")
        return v

    @model_validator(mode="after")
    def _check_ranges(self) -> Settings:
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must be <= max_k ({self.max_k})")
        if self.default_candidates > self.max_candidates:
            raise ValueError(
                f"default_candidates ({self.default_candidates}) must be <= max_candidates ({self.max_candidates})"
            )
        if self.cache == "redis" and self.redis_url is None:
            raise ValueError("cache=redis needs redis_url (HASHREC_REDIS_URL)")
        return self

    @property
    def cache_backend(self) -> Literal["redis", "memory", "none"]:
        """The cache actually used: ``auto`` resolves to Redis when a URL is set, else the in-process LRU."""
        if self.cache == "auto":
            return "redis" if self.redis_url else "memory"
        return self.cache

    def to_env(self) -> dict[str, str]:
        """These settings as ``HASHREC_*`` variables (for uvicorn worker processes, which re-read them)."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"HASHREC_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
        return env
