"""Settings: HASHREC_ environment variables, validation at start-up naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from hashrec.service.settings import Settings


def test_env_prefix_and_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HASHREC_BUNDLES", str(tmp_path))
    monkeypatch.setenv("HASHREC_MAX_K", "50")
    monkeypatch.setenv("HASHREC_REDIS_URL", "redis://localhost:6379/0")
    s = Settings()  # type: ignore[call-arg]
    assert s.bundles == tmp_path
    assert s.max_k == 50
    assert s.cache_backend == "redis"
    assert Settings(bundles=tmp_path).cache_backend == "redis"  # env still applies to the rest
    monkeypatch.delenv("HASHREC_REDIS_URL")
    assert Settings(bundles=tmp_path).cache_backend == "memory"


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("port", 0, "port"),
        ("max_k", 0, "max_k"),
        ("default_k", 500, "default_k"),
        ("redis_url", "http://x", "redis_url"),
        ("admin_token", "short", "admin_token"),
        ("cache", "redis", "redis_url"),
        ("unknown_user", "maybe", "unknown_user"),
        ("cache_ttl_s", -1, "cache_ttl_s"),
        ("cache_ttl_jitter", 1.0, "cache_ttl_jitter"),
        ("cache_refresh_ahead", -0.1, "cache_refresh_ahead"),
        ("cache_refresh_ahead", 1.0, "cache_refresh_ahead"),
        ("cache_refresh_concurrency", 0, "cache_refresh_concurrency"),
        ("gc_freeze", "sometimes", "gc_freeze"),
    ],
)
def test_bad_values_name_the_field(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, field: str, value: object, needle: str
) -> None:
    monkeypatch.delenv("HASHREC_REDIS_URL", raising=False)
    with pytest.raises(ValidationError) as err:
        Settings(bundles=tmp_path, **{field: value})
    assert needle in str(err.value)


def test_refresh_ahead_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HASHREC_BUNDLES", str(tmp_path))
    s = Settings()  # type: ignore[call-arg]
    assert s.cache_refresh_ahead == 0.1 and s.cache_refresh_concurrency == 16 and s.gc_freeze is True
    monkeypatch.setenv("HASHREC_CACHE_REFRESH_AHEAD", "0")  # 0 = off, a valid value
    monkeypatch.setenv("HASHREC_CACHE_REFRESH_CONCURRENCY", "16")
    monkeypatch.setenv("HASHREC_GC_FREEZE", "false")
    s = Settings()  # type: ignore[call-arg]
    assert s.cache_refresh_ahead == 0.0 and s.cache_refresh_concurrency == 16 and s.gc_freeze is False
    monkeypatch.setenv("HASHREC_CACHE_REFRESH_AHEAD", "0.95x")
    with pytest.raises(ValidationError, match="cache_refresh_ahead"):
        Settings()  # type: ignore[call-arg]


def test_missing_bundles_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HASHREC_BUNDLES", raising=False)
    with pytest.raises(ValidationError, match="bundles"):
        Settings()  # type: ignore[call-arg]


def test_to_env_round_trips(tmp_path: Path) -> None:
    s = Settings(bundles=tmp_path, port=9001, admin_token="a" * 20, access_log=False)
    env = s.to_env()
    assert env["HASHREC_PORT"] == "9001"
    assert env["HASHREC_ADMIN_TOKEN"] == "a" * 20
    assert env["HASHREC_ACCESS_LOG"] == "false"


def test_native_thread_limits_cover_an_already_loaded_blas() -> None:
    import numpy as np
    from threadpoolctl import threadpool_info

    from hashrec.service.app import limit_native_threads

    np.ones((4, 4)) @ np.ones(4)  # BLAS loaded and initialised before the limit, as in `hashrec serve`
    limit_native_threads(1)
    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    assert blas and all(i["num_threads"] == 1 for i in blas)
