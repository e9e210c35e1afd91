"""Helpers shared by the tests and the benchmarks: real processes and bundles without training.

One server launcher (:class:`ServerProcess`), one Redis launcher, one bundle maker, one free-port helper.
Benchmarks import this package (``sys.path`` gets ``tests/``); the tests never import benchmark code.
"""

from .bundles import ADMIN_TOKEN, expected_answers, make_bundle, random_foldin, random_z, write_run
from .processes import RedisProcess, ServerProcess, free_port, redis_command, rss_bytes

__all__ = [
    "ADMIN_TOKEN",
    "RedisProcess",
    "ServerProcess",
    "expected_answers",
    "free_port",
    "make_bundle",
    "random_foldin",
    "random_z",
    "redis_command",
    "rss_bytes",
    "write_run",
]
