"""The current request's id, visible to every log record emitted while the request is handled."""

from __future__ import annotations

import itertools
import os
import re
from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("hashrec_request_id", default=None)

# Ids from clients are echoed into logs and headers: accept only short, printable, header-safe ones.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


# New ids: a random per-process prefix plus a counter. Unique across processes and restarts (the prefix has
# 64 random bits) without a getrandom() system call per request, which a uuid4 would cost.
_PREFIX = os.urandom(8).hex()
_COUNTER = itertools.count(1)


def accept_request_id(incoming: str | None) -> str:
    """The client's X-Request-ID when it is safe to echo (1-128 of ``A-Za-z0-9._:-``), else a new id
    (``<16 hex digits of this process>-<counter in hex>``)."""
    if incoming and _SAFE_ID.match(incoming):
        return incoming
    return f"{_PREFIX}-{next(_COUNTER):x}"
