"""`lockgate demo`: its steps one by one against a real embedded PostgreSQL, then the whole
command as a subprocess driven with psql, the audit CLI and Ctrl-C."""

from __future__ import annotations

import json
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from lockgate import demo
from lockgate.config.model import Manifest


def test_luhn_check_digit_known_numbers() -> None:
    assert demo.luhn_valid("79927398713")
    assert demo.luhn_valid("4111111111111111")
    assert not demo.luhn_valid("4111111111111112")
    assert not demo.luhn_valid("41111111111111x1")
    assert demo.luhn_check_digit("7992739871") == "3"


def test_fake_customers_are_realistic_and_deterministic() -> None:
    customers = demo.fake_customers()
    assert len(customers) == demo.DEMO_ROWS == 500
    assert customers == demo.fake_customers()
    for c in customers:
        assert re.fullmatch(r"\d{3}-\d{2}-\d{4}", c.ssn)
        assert re.fullmatch(r"\d{16}", c.card_number)
        assert demo.luhn_valid(c.card_number)
        assert "@" in c.email and " " in c.full_name
        assert c.created_at.tzinfo is not None
    assert len({c.email for c in customers}) == len(customers)


def test_choose_port_skips_a_taken_port() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        chosen = demo.choose_port(taken)
        assert chosen != taken and chosen > taken
        assert demo.port_is_free("127.0.0.1", chosen)
        with pytest.raises(demo.DemoError) as err:
            demo.choose_port(taken, attempts=1)
        assert "--port" in err.value.hint


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A scratch folder outside pytest's basetemp.

    As root, pgserver runs postgres as another account and opens up the folders above the
    data directory; a concurrent pytest session resets its basetemp to 0700, which would
    lock that account out mid-initdb.
    """
    path = Path(tempfile.mkdtemp(prefix="lockgate-demo-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def embedded_server() -> Iterator[demo.EmbeddedPostgres]:
    """One embedded server for the module: initdb and start cost seconds each time.

    Its folder is outside pytest's basetemp, for the reason `scratch` gives.
    """
    path = Path(tempfile.mkdtemp(prefix="lockgate-demo-test-"))
    pg = demo.start_embedded_postgres(path / "pgdata")
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def embedded(embedded_server: demo.EmbeddedPostgres) -> demo.EmbeddedPostgres:
    """The module's server without the demo database: each test seeds from nothing."""
    embedded_server.psql(f"DROP DATABASE IF EXISTS {demo.DATABASE} WITH (FORCE)")
    return embedded_server


def test_embedded_server_is_seeded_once_with_500_rows(
    embedded: demo.EmbeddedPostgres,
) -> None:
    assert embedded.is_running()
    assert demo.seed_customers(embedded) == 500
    first = embedded.psql("SELECT * FROM customers ORDER BY id", demo.DATABASE)
    messages: list[str] = []
    assert demo.seed_customers(embedded, messages.append) == 500
    assert any("already" in m for m in messages)
    assert embedded.psql("SELECT * FROM customers ORDER BY id", demo.DATABASE) == first

    cards = embedded.psql("SELECT card_number FROM customers", demo.DATABASE).split()
    assert len(cards) == 500 and all(demo.luhn_valid(c) and len(c) == 16 for c in cards)
    ssns = embedded.psql("SELECT ssn FROM customers", demo.DATABASE).split()
    assert all(re.fullmatch(r"\d{3}-\d{2}-\d{4}", s) for s in ssns)


def test_orders_are_seeded_once(embedded: demo.EmbeddedPostgres) -> None:
    demo.seed_customers(embedded)
    messages: list[str] = []
    assert demo.seed_orders(embedded, messages.append) == demo.ORDER_ROWS
    assert demo.seed_orders(embedded, messages.append) == demo.ORDER_ROWS
    assert len([m for m in messages if "Seeding" in m]) == 1
    joined = "SELECT count(*) FROM orders o JOIN customers c ON c.id = o.customer_id"
    assert embedded.psql(joined, demo.DATABASE).strip() == str(demo.ORDER_ROWS)


def test_a_partial_table_is_reseeded(embedded: demo.EmbeddedPostgres) -> None:
    demo.seed_customers(embedded)
    embedded.psql("DELETE FROM customers WHERE id > 10", demo.DATABASE)
    assert demo.seed_customers(embedded) == 500


def test_stop_stops_the_embedded_server(scratch: Path) -> None:
    pg = demo.start_embedded_postgres(scratch / "pgdata")
    assert pg.is_running()
    pg.stop()
    assert not pg.is_running()
    again = demo.start_embedded_postgres(scratch / "pgdata")  # reuses the data directory
    try:
        assert again.is_running()
    finally:
        again.stop()


def test_manifest_points_at_the_embedded_server(
    scratch: Path, embedded: demo.EmbeddedPostgres
) -> None:
    path = demo.write_manifest(scratch / "demo", embedded, 6543)
    data = yaml.safe_load(path.read_text())
    manifest = Manifest.model_validate(data)
    (listener,) = manifest.listeners
    assert (listener.host, listener.port) == ("127.0.0.1", 6543)
    assert listener.tls.enabled and listener.tls.cert is None
    assert manifest.state.url == "sqlite:///state/lockgate.db"
    resource = manifest.resource("demo")
    assert resource is not None
    up = resource.upstream
    assert up.host.startswith("/") and up.password is None
    assert (Path(up.host) / f".s.PGSQL.{up.port}").exists()
    (rule,) = manifest.access
    assert rule.groups == ["analysts"] and rule.resources == ["demo"]
    assert rule.read_only
    guardrail, bulk = manifest.guardrails.rules
    assert guardrail.use == "protect-production" and guardrail.resources == ["demo"]
    assert bulk.match.rows_over == 1000 and bulk.action == "review"
    (reviews,) = manifest.approvals.rules
    assert reviews.reviewers == ["admins"] and reviews.guardrails == [bulk.name]


def test_manifest_loads_with_the_loader(scratch: Path, embedded: demo.EmbeddedPostgres) -> None:
    from lockgate.config.loader import load_manifest

    manifest = load_manifest(demo.write_manifest(scratch / "demo", embedded, 6543))
    assert manifest.resource("demo") is not None
    assert manifest.state_url == "sqlite:///" + str(
        (scratch / "demo" / "state/lockgate.db").resolve()
    )


def test_psql_lines_have_the_documented_form() -> None:
    assert demo.psql_line("127.0.0.1", 6432, "TOK") == (
        'psql "host=127.0.0.1 port=6432 dbname=demo user=analyst password=TOK sslmode=require"'
    )
    assert demo.pgpassword_line("127.0.0.1", 6432, "TOK").startswith("PGPASSWORD=TOK psql ")


async def test_demo_token_verifies_as_analyst(
    scratch: Path, embedded: demo.EmbeddedPostgres
) -> None:
    from lockgate.config.loader import load_manifest
    from lockgate.identity.tokens import GatewayTokenAuthority
    from lockgate.identity.verifier import GatewayTokenVerifier
    from lockgate.store import open_engine

    manifest = load_manifest(demo.write_manifest(scratch / "demo", embedded, 6543))
    issued = demo.issue_demo_token(manifest)
    assert issued.expires_at is not None
    engine = open_engine(manifest.state_url)
    try:
        verifier = GatewayTokenVerifier(GatewayTokenAuthority(manifest, engine))
        principal = await verifier.verify(issued.token)
    finally:
        engine.dispose()
    assert principal.subject == "analyst" and principal.groups == frozenset({"analysts"})
    lifetime = issued.expires_at - datetime.now(UTC)
    assert timedelta(hours=7, minutes=55) < lifetime <= timedelta(hours=8)


# --- the whole command ---------------------------------------------------------------

LOCKGATE = str(Path(sys.executable).parent / "lockgate")
PSQL_LINE = re.compile(
    r'^\s*(psql "host=127\.0\.0\.1 port=(\d+) dbname=demo user=analyst '
    r'password=(\S+) sslmode=require")\s*$'
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _lines(stream: object, into: queue.Queue[str | None]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line)
    into.put(None)


@pytest.mark.skipif(shutil.which("psql") is None, reason="needs the psql client")
def test_demo_end_to_end(scratch: Path) -> None:
    """`lockgate demo` as a user runs it: paste the psql line, audit, Ctrl-C."""
    workdir = scratch
    port = _free_port()
    proc = subprocess.Popen(
        [LOCKGATE, "demo", "--dir", "tmp", "--port", str(port)],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        command = None
        while command is None:
            line = lines.get(timeout=180)
            assert line is not None, "demo exited early:\n" + "".join(seen)
            seen.append(line)
            m = PSQL_LINE.match(line)
            if m:
                command = m.group(1)
                assert int(m.group(2)) == port
        ready = "".join(_drain_until(lines, seen, "Press Ctrl-C"))
        assert "lockgate audit sessions -c tmp/lockgate.yaml" in ready
        approve = re.search(r"(lockgate reviews approve ID .*)", ready)
        assert approve is not None
        # The admin console: its address and the admin token to sign in with.
        console = re.search(r"(https://127\.0\.0\.1:\d+)/  -> .*\n\s+(\S+)\n", ready)
        assert console is not None, ready
        import httpx

        with httpx.Client(base_url=console.group(1), verify=False, timeout=30) as c:
            me = c.post("/api/auth/token", json={"token": console.group(2)})
            assert me.status_code == 200, me.text
            assert me.json()["subject"] == "admin" and "admin" in me.json()["roles"]

        done = subprocess.run(
            [*shlex.split(command), "-X", "-A", "-t", "-c", "select count(*) from customers"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "500"

        # A bulk read the planner underestimates: paused at 1,000 rows, approved as printed.
        bulk = subprocess.Popen(
            [
                *shlex.split(command),
                "-X",
                "-A",
                "-t",
                "-c",
                "SELECT * FROM orders WHERE id % 2 = 0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            pending: list[dict[str, str]] = []
            for _ in range(300):
                listed = subprocess.run(
                    [LOCKGATE, "reviews", "list", "--json", "-c", "tmp/lockgate.yaml"],
                    cwd=workdir, capture_output=True, text=True, timeout=60, check=True,
                )  # fmt: skip
                pending = json.loads(listed.stdout)
                if pending:
                    break
                time.sleep(0.1)
            assert pending and pending[0]["guardrail"] == "bulk-reads"
            printed = approve.group(1).replace(" ID ", f" {pending[0]['id']} ")
            subprocess.run(
                [LOCKGATE, *shlex.split(printed)[1:]],
                cwd=workdir, capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            out, err = bulk.communicate(timeout=60)
        finally:
            if bulk.poll() is None:
                bulk.kill()
                bulk.wait()
        assert bulk.returncode == 0, err
        assert len(out.splitlines()) == demo.ORDER_ROWS // 2
        assert "held for review" in err

        audit = subprocess.run(
            [LOCKGATE, "audit", "sessions", "-c", "tmp/lockgate.yaml"],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert audit.returncode == 0, audit.stderr
        assert "analyst" in audit.stdout and "demo" in audit.stdout
        assert (workdir / "tmp" / "pgdata" / "postmaster.pid").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    rest = "".join(_drain_until(lines, seen, None))
    assert code == 0, "".join(seen)
    assert "Gateway stopped." in rest and "Embedded PostgreSQL stopped." in rest
    assert not (workdir / "tmp" / "pgdata" / "postmaster.pid").exists()


def _drain_until(lines: queue.Queue[str | None], seen: list[str], marker: str | None) -> list[str]:
    """Read output lines until one contains `marker` (or the end, for None); return them."""
    got: list[str] = []
    while True:
        line = lines.get(timeout=60)
        if line is None:
            return got
        got.append(line)
        seen.append(line)
        if marker is not None and marker in line:
            return got


def test_manifest_masks_personal_data_for_the_analyst(
    scratch: Path, embedded: demo.EmbeddedPostgres
) -> None:
    from lockgate.masking.policy import MaskPolicy
    from lockgate.model import Principal

    manifest = Manifest.model_validate(demo.manifest_data(embedded, 6543))
    analyst = Principal(demo.SUBJECT, frozenset({demo.GROUP}))
    policy = MaskPolicy.for_session(manifest, analyst, "demo", b"k")
    for column in ("ssn", "card_number", "email", "phone"):
        assert policy.column("public", "customers", column) is not None, column
    assert policy.column("public", "customers", "city") is None
    other = Principal("someone-else", frozenset({demo.GROUP}))
    assert not MaskPolicy.for_session(manifest, other, "demo", b"k").active
