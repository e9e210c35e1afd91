"""Docker files stay in step with the package: structure of the compose file and the Dockerfile, and every
``hashrec`` command they run exists (``hashrec <command> --help`` succeeds). No Docker engine needed."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from support.processes import HASHREC

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
SCRIPT = REPO / "docker" / "train_and_export.sh"


@pytest.fixture(scope="module")
def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def hashrec_commands() -> list[list[str]]:
    """Every `hashrec ...` invocation in the Dockerfile, the compose file and the trainer script."""
    cmds: list[list[str]] = []
    for line in SCRIPT.read_text().splitlines():
        line = line.strip()
        if line.startswith("hashrec "):
            cmds.append(shlex.split(line.split("#")[0]))
    for word, rest in dockerfile_instructions():
        if word == "RUN" and "hashrec " in rest:
            for part in rest.split("&&"):
                if part.strip().startswith("hashrec"):
                    cmds.append(shlex.split(part.split(">")[0]))
    entry = dict(dockerfile_instructions())
    entrypoint, cmd = json.loads(entry["ENTRYPOINT"]), json.loads(entry["CMD"])
    assert entrypoint == ["hashrec"]
    cmds.append(entrypoint + cmd)
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    cmds.append(["hashrec", *services["api"]["command"]])
    return cmds


def test_compose_services_and_order(compose: dict) -> None:  # type: ignore[type-arg]
    s = compose["services"]
    # services outside an optional profile (`monitoring` adds Prometheus, `distributed` the jobs)
    assert {name for name, svc in s.items() if "profiles" not in svc} == {"redis", "trainer", "api", "lb"}
    assert "redis-cli" in s["redis"]["healthcheck"]["test"] and "ping" in s["redis"]["healthcheck"]["test"]
    assert s["api"]["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "trainer": {"condition": "service_completed_successfully"},
    }
    assert s["lb"]["depends_on"] == {"api": {"condition": "service_healthy"}}
    assert s["trainer"]["restart"] == "no"  # one-shot
    assert s["trainer"]["build"]["dockerfile"] == "docker/Dockerfile"
    assert (REPO / s["trainer"]["build"]["context"] / s["trainer"]["build"]["dockerfile"]).is_file()
    assert s["api"]["image"] == s["trainer"]["image"]


def test_compose_shares_the_bundles_volume_and_puts_the_load_balancer_in_front(compose: dict) -> None:  # type: ignore[type-arg]
    s = compose["services"]

    def mount(service: str) -> str:
        vols = [v for v in s[service]["volumes"] if v.split(":")[0] == "bundles"]
        assert len(vols) == 1, (service, s[service]["volumes"])
        return vols[0].split(":")[1]

    assert "bundles" in compose["volumes"]
    assert mount("trainer") == s["trainer"]["environment"]["HASHREC_BUNDLES"]
    assert mount("api") == s["api"]["environment"]["HASHREC_BUNDLES"]
    assert mount("trainer") == mount("api")
    assert s["api"]["environment"]["HASHREC_REDIS_URL"].startswith("redis://redis:")
    assert "/readyz" in " ".join(s["api"]["healthcheck"]["test"])
    # several replicas, no host port of their own: HAProxy publishes one and proxies to the service name
    assert s["api"]["deploy"]["replicas"] >= 2 and "ports" not in s["api"]
    assert any(str(p).endswith(":8000") for p in s["lb"]["ports"])
    mounts = {v.split(":")[1]: REPO / v.split(":")[0] for v in s["lb"]["volumes"]}
    conf = mounts["/usr/local/etc/haproxy/haproxy.cfg"]
    assert conf.resolve() == REPO / "docker" / "haproxy.cfg"
    text = conf.read_text()
    assert "bind :8000" in text and "8000" in " ".join(s["api"]["command"])
    # every backend finds the replicas through Docker's DNS, with room for more than compose starts
    templates = re.findall(r"server-template api (\d+) api:8000 .*resolvers docker", text)
    assert len(templates) == 3 and all(int(n) >= s["api"]["deploy"]["replicas"] for n in templates)


def test_dockerfile_structure() -> None:
    ins = dockerfile_instructions()
    froms = [rest for word, rest in ins if word == "FROM"]
    assert len(froms) >= 2 and all(" AS " in f.upper() for f in froms)  # multi-stage
    args = {rest.split("=")[0]: rest.split("=", 1)[1] for word, rest in ins if word == "ARG" and "=" in rest}
    assert "slim" in args["PYTHON_IMAGE"]
    assert args["TORCH_INDEX_URL"].endswith("/cpu")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pin = next(d for d in pyproject["project"]["dependencies"] if d.startswith("torch=="))
    assert pin == f"torch=={args['TORCH_VERSION']}"  # the image's torch is the package's pin
    runs = " ".join(rest for word, rest in ins if word == "RUN")
    assert "--index-url ${TORCH_INDEX_URL} torch==${TORCH_VERSION}" in runs
    assert '".[serve' in runs
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    health = [rest for word, rest in ins if word == "HEALTHCHECK"]
    assert health and "/readyz" in health[0]
    # every COPY source exists in the repository (the build context)
    for word, rest in ins:
        if word == "COPY" and not rest.startswith("--from"):
            for src in shlex.split(rest)[:-1]:
                assert (REPO / src).exists(), src
    ignored = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if not line.startswith("#")
    ]
    for needed in ("pyproject.toml", "README.md", "service", "docker"):
        assert needed not in ignored


def test_every_hashrec_command_exists() -> None:
    cmds = hashrec_commands()
    helps: dict[tuple[str, ...], str] = {}
    for cmd in cmds:
        words = [w for w in cmd[1:] if not w.startswith(("-", "$", '"')) and "/" not in w]
        # subcommand words come first: `data synth`, `bundle verify`, `train`, `serve`
        sub = tuple(words[:2] if words and words[0] in ("data", "bundle", "bench") else words[:1])
        if sub not in helps:
            proc = subprocess.run([HASHREC, *sub, "--help"], capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, (sub, proc.stderr)
            helps[sub] = proc.stdout
        for opt in (w.split("=")[0] for w in cmd if w.startswith("--")):
            assert opt in helps[sub], f"`hashrec {' '.join(sub)}` has no option {opt}"
    assert {("data", "synth"), ("train",), ("export",), ("bundle", "verify"), ("serve",)} <= set(helps)


def test_trainer_script_is_strict_and_executable() -> None:
    text = SCRIPT.read_text()
    assert text.startswith("#!/bin/sh") and "set -eu" in text
    assert SCRIPT.stat().st_mode & 0o111
    proc = subprocess.run(["sh", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
