"""Hot reload: no stale answers, corrupt bundles refused, no failed or mixed-version answer under load."""

from __future__ import annotations

import random
import threading

import httpx
import pytest
from harness import ADMIN_TOKEN, ServerProcess, make_bundle

from hashrec.index.bundle import load_bundle
from hashrec.index.retriever import Retriever
from hashrec.data import Dataset

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def reload(client: httpx.Client, version: str | None = None) -> httpx.Response:
    return client.post("/admin/reload", json={"version": version} if version else {}, headers=AUTH)


def items(body: dict) -> list[str]:  # type: ignore[type-arg]
    return [it["item"] for it in body["items"]]


def test_reload_serves_the_new_version_and_no_stale_cache(
    client: httpx.Client, server: ServerProcess, synth_dataset: Dataset
) -> None:
    old = Retriever(load_bundle(server.bundles))
    user = str(synth_dataset.users.raw[5])
    assert client.get(f"/recommend/{user}").json()["source"] == "model"
    assert client.get(f"/recommend/{user}").json()["source"] == "cache"
    new_dir = make_bundle(server.bundles, synth_dataset, seed=2)
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


def test_corrupt_bundle_is_refused_and_the_old_one_keeps_serving(
    client: httpx.Client, server: ServerProcess, synth_dataset: Dataset
) -> None:
    serving = client.get("/readyz").json()["version"]
    bad_dir = make_bundle(server.bundles, synth_dataset, seed=3)  # now `current`
    target = bad_dir / "item_z.npy"
    data = bytearray(target.read_bytes())
    data[-64:] = b"\xff" * 64  # same size, different bytes: only the checksum can tell
    target.write_bytes(bytes(data))
    r = reload(client)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "bundle_invalid" and "item_z.npy" in err["message"]
    assert client.get("/readyz").json()["version"] == serving
    user = str(synth_dataset.users.raw[9])
    ok = client.get(f"/recommend/{user}")
    assert ok.status_code == 200 and ok.json()["version"] == serving
    metrics = client.get("/metrics").text
    assert 'hashrec_bundle_reloads_total{result="refused"}' in metrics


def test_reload_under_concurrent_load(
    client: httpx.Client, server: ServerProcess, synth_dataset: Dataset
) -> None:
    a_dir = make_bundle(server.bundles, synth_dataset, seed=4)
    b_dir = make_bundle(server.bundles, synth_dataset, seed=5)
    refs = {r.version: r for r in (Retriever(load_bundle(a_dir)), Retriever(load_bundle(b_dir)))}
    a, b = list(refs)
    assert reload(client, a).status_code == 200
    users = [str(u) for u in synth_dataset.users.raw[:60]]
    stop = threading.Event()
    failures: list[str] = []
    seen_versions: set[str] = set()
    counts = [0]
    lock = threading.Lock()

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=server.url, timeout=10) as c:
            while not stop.is_set():
                try:
                    if rng.random() < 0.7:
                        u = rng.choice(users)
                        r = c.get(f"/recommend/{u}", params={"k": 10})
                        if r.status_code != 200:
                            failures.append(f"GET {r.status_code} {r.text}")
                            continue
                        body = r.json()
                        (ref,) = refs[body["version"]].recommend([u], 10, 500)
                        if items(body) != ref.items:
                            failures.append(f"GET answer of {u} does not match version {body['version']}")
                        versions = {body["version"]}
                    else:
                        batch = rng.sample(users, 5)
                        r = c.post("/recommend", json={"users": batch, "k": 10})
                        if r.status_code != 200:
                            failures.append(f"POST {r.status_code} {r.text}")
                            continue
                        body = r.json()
                        versions = {body["version"]} | {x["version"] for x in body["results"]}
                        if len(versions) != 1:
                            failures.append(f"mixed versions in one batch: {versions}")
                        refs_b = refs[body["version"]].recommend(batch, 10, 500)
                        if [items(x) for x in body["results"]] != [ref.items for ref in refs_b]:
                            failures.append("POST answers do not match their version")
                    with lock:
                        seen_versions.update(versions)
                        counts[0] += 1
                except httpx.HTTPError as err:
                    failures.append(f"transport error: {err!r}")

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(6):
            r = reload(client, b if i % 2 == 0 else a)
            assert r.status_code == 200, r.text
            stop.wait(0.15)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not failures, failures[:5]
    assert seen_versions == {a, b}
    assert counts[0] > 50


@pytest.mark.parametrize("token", [None, "Bearer nope-nope-nope-nope"])
def test_reload_needs_the_token(client: httpx.Client, token: str | None) -> None:
    headers = {"Authorization": token} if token else {}
    r = client.post("/admin/reload", headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
