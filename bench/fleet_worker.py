"""The Celery app of the fleet benchmark's raw workers, for ``celery -A bench.fleet_worker
worker -P threads|gevent``: the project's app factory (settings from ORCH_*), no agents, the raw
task of bench/fleet_agents.py. Started through ``celery`` itself so that ``-P gevent`` patches
the standard library first, as it does for anyone who runs a gevent worker."""

from __future__ import annotations

import bench.fleet_agents  # noqa: F401 - registers fleet.raw_stream on every app
from workers.app import create_app

app = create_app(load_agents=False)
