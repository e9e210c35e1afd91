"""Helpers shared by the tests and the benchmarks: the app in-process, real processes, bundles without
training.

One in-process app (:func:`app_client`), one server launcher (:class:`ServerProcess`), one Redis launcher,
one load balancer launcher (:class:`HAProxyProcess`, docker/haproxy.cfg with local addresses), one bundle maker, one
free-port helper; and how results are written (:mod:`support.report`). Benchmarks import this package
(``sys.path`` gets ``tests/``); the tests never import benchmark code.
"""

from .app import app_client, app_settings
from .bundles import ADMIN_TOKEN, expected_answers, make_bundle, random_foldin, random_z, write_run
from .processes import HAProxyProcess, RedisProcess, ServerProcess, free_port, redis_command, rss_bytes
from .report import machine_info, md_table, save_json

__all__ = [
    "ADMIN_TOKEN",
    "HAProxyProcess",
    "RedisProcess",
    "ServerProcess",
    "app_client",
    "app_settings",
    "expected_answers",
    "free_port",
    "machine_info",
    "make_bundle",
    "md_table",
    "random_foldin",
    "random_z",
    "redis_command",
    "rss_bytes",
    "save_json",
    "write_run",
]
