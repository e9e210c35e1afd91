"""docker/prometheus.yml, docker/alerts.yml and the compose `monitoring` profile: structure, and every
metric an alert reads is one the app really exports (in-process; no Docker engine or promtool needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DURATION = re.compile(r"^\d+[smhd]$")


@pytest.fixture(scope="module")
def rules() -> list[dict]:  # type: ignore[type-arg]
    doc = yaml.safe_load((DOCKER / "alerts.yml").read_text())
    assert isinstance(doc, dict) and isinstance(doc.get("groups"), list) and doc["groups"]
    out = []
    for group in doc["groups"]:
        assert set(group) <= {"name", "rules", "interval", "limit"} and group["name"]
        out += group["rules"]
    return out


def test_alert_rules_are_well_formed(rules: list[dict]) -> None:  # type: ignore[type-arg]
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, r
        assert re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", r["alert"])
        assert DURATION.match(r["for"]), r["for"]
        assert r["labels"]["severity"] in {"page", "warn"}
        assert r["annotations"]["summary"] and r["annotations"]["description"]
        expr = r["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        assert expr.count('"') % 2 == 0
        for window in re.findall(r"\[([^\]]+)\]", expr):
            assert DURATION.match(window), window


def test_issue_6_alerts_exist(rules: list[dict]) -> None:  # type: ignore[type-arg]
    exprs = {r["alert"]: r["expr"] for r in rules}
    joined = " ".join(exprs.values())
    assert "histogram_quantile(0.99" in joined  # p99
    assert 'status=~"5.."' in joined  # error rate
    assert 'result=~"error|skipped"' in joined  # cache error rate
    assert "hashrec_recall_overlap_sum" in joined and "hashrec_recall_overlap_count" in joined  # recall


def _exported_families(text: str) -> set[str]:
    fams = set()
    for line in text.splitlines():
        m = re.match(r"^# TYPE (\S+) (\S+)", line)
        if m:
            name, kind = m.groups()
            fams.add(name)
            if kind == "counter":
                fams.add(name + "_total")
            if kind == "histogram":
                fams |= {name + "_bucket", name + "_sum", name + "_count"}
    return fams


def test_every_metric_an_alert_reads_is_exported(rules: list[dict], client: TestClient) -> None:  # type: ignore[type-arg]
    client.get("/recommend/u000")
    exported = _exported_families(client.get("/metrics").text)
    used = {m for r in rules for m in re.findall(r"\bhashrec_[a-z_]+\b", r["expr"])}
    assert used and used <= exported, used - exported


def test_scrape_config_and_compose_profile() -> None:
    prom = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    assert "/etc/prometheus/alerts.yml" in prom["rule_files"]
    (job,) = prom["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["job_name"] == "hashrec"
    # every replica of the api service, found through Docker's DNS
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["api"] and sd["type"] == "A" and sd["port"] == 8000
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    svc = compose["services"]["prometheus"]
    assert svc["profiles"] == ["monitoring"]  # optional: `docker compose up` alone does not start it
    mounts = {v.split(":")[1]: REPO / v.split(":")[0] for v in svc["volumes"]}
    assert mounts["/etc/prometheus/prometheus.yml"].resolve() == DOCKER / "prometheus.yml"
    assert mounts["/etc/prometheus/alerts.yml"].resolve() == DOCKER / "alerts.yml"
    assert any("--config.file=/etc/prometheus/prometheus.yml" in a for a in svc["command"])
    assert "api" in svc["depends_on"]
    # the scrape target is the api service on the port it listens on
    api = compose["services"]["api"]
    assert "8000" in api["command"] and "api" in compose["services"]
