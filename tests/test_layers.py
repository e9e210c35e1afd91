"""The architecture's one rule, checked on the source: imports flow one way (docs/architecture.md).

data <- index <- model, data <- index <- service, and the command line on top. Every import is read from
the code (function-level ones included), relative imports resolved; a new import across the layers in the
wrong direction fails here with the file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# folder -> package name (pyproject.toml maps the design's top-level folders into the hashrec namespace)
PACKAGES = {
    "hashrec/data": "hashrec.data",
    "index": "hashrec.index",
    "model": "hashrec.model",
    "service": "hashrec.service",
}
ALLOWED = {
    "hashrec.data": {"hashrec.data"},
    "hashrec.index": {"hashrec.data", "hashrec.index"},
    "hashrec.model": {"hashrec.data", "hashrec.index", "hashrec.model"},
    "hashrec.service": {"hashrec.data", "hashrec.index", "hashrec.service"},
}
# the root package (its version string) may be read by anyone; the CLI modules by nobody below them
ROOT_OK = {"hashrec"}


def _layer(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "hashrec" and len(parts) > 1 else parts[0]


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return out


def _modules() -> list[tuple[Path, str]]:
    found = []
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found.append((path, ".".join([package, *parts])))
    return found


@pytest.mark.parametrize("path,module", _modules(), ids=lambda x: str(x))
def test_imports_flow_one_way(path: Path, module: str) -> None:
    layer = _layer(module)
    bad = []
    for line, name in _imports(path, module):
        if not name.startswith("hashrec"):
            continue
        target = _layer(name)
        if name in ROOT_OK or target in ALLOWED[layer]:
            continue
        bad.append(f"{path.relative_to(REPO)}:{line}: {layer} imports {name}")
    assert not bad, "\n".join(bad)


def test_tests_do_not_import_benchmarks() -> None:
    bad = [
        f"{path.relative_to(REPO)}:{line}: imports {name}"
        for path in sorted((REPO / "tests").rglob("*.py"))
        for line, name in _imports(path, "tests")
        if name.split(".")[0] in ("benchmarks", "bench") or name.startswith("hashrec.bench")
    ]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_wrong_import(tmp_path: Path) -> None:
    """The rule is not vacuous: an index module importing the model is reported."""
    src = tmp_path / "x.py"
    src.write_text("def f():\n    from hashrec.model.run import load_run\n    from ..data import IdMap\n")
    names = [n for _l, n in _imports(src, "hashrec.index.x")]
    assert names == ["hashrec.model.run", "hashrec.data"]
    assert _layer(names[0]) not in ALLOWED["hashrec.index"]
