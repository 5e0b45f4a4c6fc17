"""pgbench through the gateway: initialisation (DDL + COPY) and every query mode."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from tests.integration.postgres.conftest import RunningGateway

pytestmark = [
    pytest.mark.pg,
    pytest.mark.skipif(shutil.which("pgbench") is None, reason="pgbench is not installed"),
]


def _pgbench(gateway: RunningGateway, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGPASSWORD": token, "PGSSLMODE": "require", "PGCONNECT_TIMEOUT": "10"}
    return subprocess.run(
        ["pgbench", "-h", "127.0.0.1", "-p", str(gateway.port), "-U", "alice", *args, "itdb"],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
        check=False,
    )


@pytest.fixture(scope="module")
def initialised(gateway: RunningGateway, token: str) -> RunningGateway:
    r = _pgbench(gateway, token, "-i", "-s", "1", "-q")
    assert r.returncode == 0, r.stderr
    assert "done" in r.stderr
    return gateway


def _processed(out: str) -> tuple[int, int]:
    done = re.search(r"number of transactions actually processed: (\d+)", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    assert done is not None, out
    return int(done.group(1)), int(failed.group(1)) if failed else 0


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
@pytest.mark.parametrize("script", ["select-only", "tpcb-like"])
def test_pgbench_modes(initialised: RunningGateway, token: str, mode: str, script: str) -> None:
    r = _pgbench(initialised, token, "-b", script, "-M", mode, "-c", "4", "-j", "2", "-t", "50")
    assert r.returncode == 0, r.stderr + r.stdout
    assert _processed(r.stdout) == (200, 0)
    assert "error" not in r.stderr.lower(), r.stderr
