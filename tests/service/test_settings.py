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
        ("cache_bytes", 1000, "cache_bytes"),
        ("near_cache_bytes", -1, "near_cache_bytes"),
        ("export_processes", 0, "export_processes"),
        ("workers", 0, "workers"),
        ("bundle_poll_s", -1, "bundle_poll_s"),
        ("max_inflight", 0, "max_inflight"),
        ("request_timeout_s", 0, "request_timeout_s"),
        ("max_exports", 0, "max_exports"),
        ("api_token", "short", "api_token"),
        ("export_token", "short", "export_token"),
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


def test_cache_sizes_and_gc_freeze_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HASHREC_BUNDLES", str(tmp_path))
    s = Settings()  # type: ignore[call-arg]
    assert s.cache_bytes == 64 << 20 and s.near_cache_bytes == 16 << 20 and s.gc_freeze is True
    monkeypatch.setenv("HASHREC_CACHE_BYTES", str(1 << 20))
    monkeypatch.setenv("HASHREC_NEAR_CACHE_BYTES", "0")  # 0 = no near cache, a valid value
    monkeypatch.setenv("HASHREC_GC_FREEZE", "false")
    s = Settings()  # type: ignore[call-arg]
    assert s.cache_bytes == 1 << 20 and s.near_cache_bytes == 0 and s.gc_freeze is False
    monkeypatch.setenv("HASHREC_CACHE_BYTES", "64MB")
    with pytest.raises(ValidationError, match="cache_bytes"):
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
