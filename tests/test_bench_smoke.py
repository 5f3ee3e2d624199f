"""The benchmark suite runs end to end on a tiny N and prints its comparison table.

Not a timed test: it never asserts speed, only that every figure is produced.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def _env() -> dict[str, str]:
    # Never the machine's Redis: without ORCH_BENCH_REDIS_URL the suite uses the embedded server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_quick_suite_prints_the_comparison_table(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench.suite", "--quick", "--out", str(tmp_path)],
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    text = out.stdout
    columns = [
        "target",
        "workload",
        "N",
        "ours p50 ms",
        "ours p90 ms",
        "raw p50 ms",
        "raw p90 ms",
        "ours/raw p50",
        "ours/raw p90",
    ]
    header = re.compile(r"^\|\s*" + r"\s*\|\s*".join(map(re.escape, columns)) + r"\s*\|$", re.M)
    assert header.search(text), text[-3000:]
    for row in (
        "parallel-spawn vs group",
        "gather-then-merge vs chord",
        "race: submit -> winner",
        "race: cancel latency",
        "single-subagent round trip",
        "submit -> first subagent started",
        "last subagent finished -> wait() returns",
    ):
        assert f"| {row}" in text, row
    for section in ("### Throughput", "### Redis commands per subagent", "### Beside Ray and Dask"):
        assert section in text
    assert "ours/Ray" in text and "ours/Dask" in text
    report = (tmp_path / "latest.md").read_text()
    assert header.search(report)
    assert (tmp_path / "latest.svg").read_text().startswith("<svg")
