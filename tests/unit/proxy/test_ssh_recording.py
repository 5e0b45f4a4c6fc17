"""Raw logs of exec and SFTP channels: what is kept, what the checksum covers."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from lockgate.proxy.ssh_recording import RawLog


def _chunks(data: bytes, rng: random.Random) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        n = rng.randrange(1, 40_000)
        out.append(data[pos : pos + n])
        pos += n
    return out


@pytest.mark.parametrize("whole", [True, False])
def test_a_stream_is_kept_to_its_cap_and_its_checksum_covers_what_the_kind_says(
    tmp_path: Path, whole: bool
) -> None:
    rng = random.Random(11)
    cap = 100_000
    data = rng.randbytes(3 * (1 << 20) + 17)  # several of the feed's 1 MiB batches
    log = RawLog(tmp_path / "4", cap, whole=whole)
    for chunk in _chunks(data, rng):
        log.input.add(chunk)
    log.output.add(b"ok\n")
    digest = log.close({"note": "x"})

    raw = (tmp_path / "4.json").read_bytes()
    assert digest == hashlib.sha256(raw).hexdigest()
    summary = json.loads(raw)
    stdin = summary["stdin"]
    assert (tmp_path / "4.in").read_bytes() == data[:cap]
    assert stdin["bytes"] == len(data) and stdin["kept"] == cap and stdin["truncated"]
    covered = data if whole else data[:cap]
    assert stdin["sha256"] == hashlib.sha256(covered).hexdigest()
    assert stdin["sha256_of"] == ("stream" if whole else "kept")
    stdout = summary["stdout"]
    assert (stdout["bytes"], stdout["kept"], stdout["truncated"]) == (3, 3, False)
    assert stdout["sha256"] == hashlib.sha256(b"ok\n").hexdigest()
    assert summary["stderr"]["file"] is None and summary["note"] == "x"


def test_recording_work_runs_in_order_and_failures_reach_the_waiter_or_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from lockgate.proxy.ssh_recording import after_pending, in_order

    seen: list[int] = []
    for i in range(200):
        in_order(seen.append, i)

    def fails() -> None:
        raise OSError("disk full")

    in_order(fails)  # nobody waits for it: logged, and the work after it still runs
    assert after_pending(lambda: list(seen)) == list(range(200))
    with pytest.raises(ValueError, match="bad"):
        after_pending(lambda: int("bad"))
    assert after_pending(lambda: 7) == 7
    assert any("recording work failed" in r.getMessage() for r in caplog.records)
