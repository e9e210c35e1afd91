"""docs/reliability.md: each reliability command (fuzz, faults, soak) owns one section of it.

The sections are replaced in place (``report.write_section`` with its lock), each headed by the machine and
the date it was measured on and the JSON file that holds the full result.
"""

from __future__ import annotations

from pathlib import Path

from .report import DOCS, REPO, machine_info, write_section

DOC = DOCS / "reliability.md"

TITLES = {
    "fuzz": "Fuzzing and hostile input (`hashrec bench fuzz`)",
    "faults": "Faults under load (`hashrec bench faults`)",
    "soak": "Soak (`hashrec bench soak`)",
}


def write_reliability_section(name: str, body: str, json_path: Path, command: str | None = None) -> Path:
    """Replace section ``name`` of docs/reliability.md with ``body`` under a title, machine and date line."""
    m = machine_info()
    try:
        rel = json_path.resolve().relative_to(REPO)
    except ValueError:
        rel = json_path
    head = f"## {TITLES.get(name, name)}\n\n"
    head += f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, shared), Python {m['python']}.\n"
    if command:
        head += f"Command: `{command}`. "
    head += f"Full result: `{rel}`.\n\n"
    return write_section(name, head + body.strip() + "\n", doc=DOC)
