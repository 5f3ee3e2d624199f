"""Benchmarks: our orchestration patterns against raw Celery, Ray and Dask (measurement only).

``python -m bench.suite`` runs the comparison suite, ``python -m bench.race_cancel`` the cancel
latency benchmark. Results go to ``bench/results/`` (not committed).
"""
