"""Hot reload, in-process: a reload pins a version and a reload without one follows ``current`` again; a
published version is followed by polling; no stale answers; corrupt bundles refused; no failed or
mixed-version answer under concurrent requests; the replaced snapshot freed even from a frozen heap."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import random
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from support import ADMIN_TOKEN, app_client, make_bundle

from hashrec.data import Dataset
from hashrec.index import publish
from hashrec.index.bundle import load_bundle
from hashrec.index.retriever import Retriever
from hashrec.service.runtime import freeze_startup_heap
from hashrec.service.state import ServingState, load_snapshot

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture()
def own_bundles(tmp_path: Path, synth_dataset: Dataset) -> Path:
    """A bundles directory of this test alone (reload tests publish versions into it)."""
    make_bundle(tmp_path / "bundles", synth_dataset, seed=1)
    return tmp_path / "bundles"


@pytest.fixture()
def client(own_bundles: Path) -> Iterator[TestClient]:
    """The app on ``own_bundles``; it does not poll ``current`` (the tests reload explicitly)."""
    with app_client(own_bundles, admin_token=ADMIN_TOKEN, bundle_poll_s=0) as c:
        yield c


def reload(client: TestClient, version: str | None = None) -> httpx.Response:
    return client.post("/admin/reload", json={"version": version} if version else {}, headers=AUTH)


def items(body: dict) -> list[str]:  # type: ignore[type-arg]
    return [it["item"] for it in body["items"]]


def test_reload_serves_the_new_version_and_no_stale_cache(
    client: TestClient, own_bundles: Path, synth_dataset: Dataset
) -> None:
    old = Retriever(load_bundle(own_bundles))
    user = str(synth_dataset.users.raw[5])
    assert client.get(f"/recommend/{user}").json()["source"] == "model"
    assert client.get(f"/recommend/{user}").json()["source"] == "cache"
    new_dir = make_bundle(own_bundles, synth_dataset, seed=2)
    new = Retriever(load_bundle(new_dir))
    assert new.version != old.version
    r = reload(client)
    assert r.status_code == 200, r.text
    assert r.json()["previous"] == old.version and r.json()["version"] == new.version and r.json()["changed"]
    body = client.get(f"/recommend/{user}").json()
    assert body["version"] == new.version and body["source"] == "model"
    (ref,) = new.recommend([user], 20, 500)
    assert items(body) == ref.items
    assert client.get("/healthz").json()["version"] == new.version
    # and back to the old version by name
    assert reload(client, old.version).json()["version"] == old.version
    body = client.get(f"/recommend/{user}").json()
    assert body["version"] == old.version
    (ref,) = old.recommend([user], 20, 500)
    assert items(body) == ref.items


def test_a_pin_holds_until_a_reload_without_version(
    client: TestClient, own_bundles: Path, synth_dataset: Dataset
) -> None:
    first = client.get("/readyz").json()["version"]
    second = make_bundle(own_bundles, synth_dataset, seed=6).name  # published: `current`
    r = reload(client, first)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["pinned"] and body["version"] == first and not body["changed"]
    assert body["workers"] == 1 and body["workers_on_version"] == 1  # in-process: this worker alone
    r = reload(client)  # no version: follow `current` again
    assert r.json() | {"load_ms": 0} == {
        "previous": first,
        "version": second,
        "changed": True,
        "pinned": False,
        "load_ms": 0,
        "workers": 1,
        "workers_on_version": 1,
    }
    assert client.get("/recommend/u000").json()["version"] == second


def test_a_published_version_is_followed_by_polling(own_bundles: Path, synth_dataset: Dataset) -> None:
    """No admin call: the app checks ``current`` every ``bundle_poll_s`` and switches, cache cleared."""
    with app_client(own_bundles, admin_token=ADMIN_TOKEN, bundle_poll_s=0.1) as c:
        old = c.get("/readyz").json()["version"]
        assert c.get("/recommend/u001").json()["source"] == "model"
        assert c.get("/recommend/u001").json()["source"] == "cache"
        new = make_bundle(own_bundles, synth_dataset, seed=7).name
        deadline = time.monotonic() + 30
        while (served := c.get("/readyz").json()["version"]) == old:
            assert time.monotonic() < deadline, "the published version was never picked up"
            time.sleep(0.05)
        body = c.get("/recommend/u001").json()
    assert served == new and body["version"] == new and body["source"] == "model"
    (ref,) = Retriever(load_bundle(own_bundles / new)).recommend(["u001"], 20, 500)
    assert items(body) == ref.items


def test_corrupt_bundle_is_refused_and_the_old_one_keeps_serving(
    client: TestClient, own_bundles: Path, synth_dataset: Dataset
) -> None:
    serving = client.get("/readyz").json()["version"]
    bad_dir = make_bundle(own_bundles, synth_dataset, seed=3)  # now `current`
    target = bad_dir / "item_vectors.npy"
    data = bytearray(target.read_bytes())
    data[-64:] = b"\xff" * 64  # same size, different bytes: only the checksum can tell
    target.write_bytes(bytes(data))
    r = reload(client)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "bundle_invalid" and "item_vectors.npy" in err["message"]
    assert client.get("/readyz").json()["version"] == serving
    user = str(synth_dataset.users.raw[9])
    ok = client.get(f"/recommend/{user}")
    assert ok.status_code == 200 and ok.json()["version"] == serving
    metrics = client.get("/metrics").text
    assert 'hashrec_bundle_reloads_total{result="refused"}' in metrics


def _ask(c: TestClient, rng: random.Random, users: list[str], refs: dict[str, Retriever]) -> set[str]:
    """One GET (70%) or POST of 5 users, checked against the Retriever of the version it names; returns
    the versions the answer carries; raises AssertionError naming what was wrong."""
    if rng.random() < 0.7:
        u = rng.choice(users)
        r = c.get(f"/recommend/{u}", params={"k": 10})
        assert r.status_code == 200, f"GET {r.status_code} {r.text}"
        body = r.json()
        (ref,) = refs[body["version"]].recommend([u], 10, 500)
        assert items(body) == ref.items, f"GET answer of {u} does not match version {body['version']}"
        return {body["version"]}
    batch = rng.sample(users, 5)
    r = c.post("/recommend", json={"users": batch, "k": 10})
    assert r.status_code == 200, f"POST {r.status_code} {r.text}"
    body = r.json()
    versions = {body["version"]} | {x["version"] for x in body["results"]}
    assert len(versions) == 1, f"mixed versions in one batch: {versions}"
    expected = refs[body["version"]].recommend(batch, 10, 500)
    assert [items(x) for x in body["results"]] == [e.items for e in expected], "POST answers differ"
    return versions


def test_reload_under_concurrent_requests(
    client: TestClient, own_bundles: Path, synth_dataset: Dataset
) -> None:
    """Four threads send requests through the app (the test client may be shared between threads) while it
    reloads back and forth: every answer is its version's own, no batch mixes versions, both versions
    are served, none fails."""
    a_dir = make_bundle(own_bundles, synth_dataset, seed=4)
    b_dir = make_bundle(own_bundles, synth_dataset, seed=5)
    refs = {r.version: r for r in (Retriever(load_bundle(a_dir)), Retriever(load_bundle(b_dir)))}
    a, b = list(refs)
    assert reload(client, a).status_code == 200
    users = [str(u) for u in synth_dataset.users.raw[:60]]
    stop = threading.Event()
    failures: list[str] = []
    answered: list[set[str]] = []

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            try:
                answered.append(_ask(client, rng, users, refs))
            except Exception as err:  # a wrong answer, or the app raising through the test client
                failures.append(repr(err))

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(6):
            r = reload(client, b if i % 2 == 0 else a)
            assert r.status_code == 200, r.text
            # at least 10 answers on each version before the next swap (a wait, not a fixed sleep)
            target, deadline = len(answered) + 10, time.monotonic() + 60
            while len(answered) < target and time.monotonic() < deadline and not failures:
                time.sleep(0.005)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not failures, failures[:5]
    assert set().union(*answered) == {a, b}
    assert len(answered) >= 60


def test_a_replaced_snapshot_is_freed_from_a_frozen_heap(own_bundles: Path) -> None:
    """The start-up bundle is frozen with everything else (``gc_freeze``); a reload drops it, and reference
    counting alone must free it (a frozen garbage cycle would never be collected: a bundle leaked per
    reload)."""
    snap = load_snapshot(own_bundles)
    bundle_ref, retriever_ref = weakref.ref(snap.bundle), weakref.ref(snap.retriever)
    try:
        assert freeze_startup_heap() > 0
        del snap
        assert bundle_ref() is None and retriever_ref() is None
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("token", [None, "Bearer nope-nope-nope-nope"])
def test_reload_needs_the_token(client: TestClient, token: str | None) -> None:
    headers = {"Authorization": token} if token else {}
    r = client.post("/admin/reload", headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_a_stalled_bundles_filesystem_does_not_stall_the_event_loop(
    own_bundles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every poll renews the worker's lease in BUNDLES/.leases; on a network filesystem that write can hang.
    Stand-in for such a filesystem: the lease write sleeps 1 s. The event loop keeps ticking meanwhile
    (a request would be answered), and the lease is still written."""
    real_write = publish.write_lease

    def stalled_write(*args: object, **kwargs: object) -> None:
        time.sleep(1.0)
        real_write(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(publish, "write_lease", stalled_write)
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    state = ServingState(own_bundles, runtime_dir=runtime)
    state.snapshot = load_snapshot(state.wanted())

    async def longest_tick_gap() -> float:
        follower = asyncio.create_task(state.follow(0.01))
        gaps, last, end = [], time.perf_counter(), time.perf_counter() + 2.5
        while (now := time.perf_counter()) < end:
            gaps.append(now - last)
            last = now
            await asyncio.sleep(0.01)
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        return max(gaps)

    gap = asyncio.run(longest_tick_gap())
    assert gap < 0.5, f"the event loop stalled {gap:.2f} s behind a lease write"
    assert publish.leased_versions(own_bundles) == {state.snapshot.version}
    assert (
        json.loads((runtime / f"worker-{os.getpid()}.json").read_text())["version"] == state.snapshot.version
    )
