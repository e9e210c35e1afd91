"""Logging set-up shared by the CLI commands (plain text for humans, JSON for the service)."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str | int = "INFO") -> None:
    """Configure the root logger once: ``time level name: message`` on stderr.

    Progress bars (tqdm) also write to stderr; stdout is kept for machine-readable output (``--json``).
    """
    root = logging.getLogger()
    if getattr(root, "_hashrec_configured", False):
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root.handlers[:] = [handler]
    root.setLevel(level)
    root._hashrec_configured = True  # type: ignore[attr-defined]
