"""The Celery app of the fleet benchmark's raw workers, for ``celery -A bench.fleet_worker
worker -P threads|gevent``: the project's app factory (settings from ORCH_*), no agents, the raw
task of bench/fleet_agents.py. Started through ``celery`` itself so that ``-P gevent`` patches
the standard library first, as it does for anyone who runs a gevent worker."""

from __future__ import annotations

import os

import bench.fleet_agents  # noqa: F401 - registers fleet.raw_stream on every app
from workers.app import create_app

app = create_app(load_agents=False)
#: ``FLEET_BROKER_MAX_CONNECTIONS``: the Redis transport's connection pool per channel (kombu's
#: default is 10; a thousand greenlets acking at once exhaust it).
if max_connections := int(os.environ.get("FLEET_BROKER_MAX_CONNECTIONS") or 0):
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "max_connections": max_connections,
    }
