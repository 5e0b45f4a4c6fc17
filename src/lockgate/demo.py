"""`lockgate demo`: everything on this machine with no configuration.

An embedded PostgreSQL (the `pgserver` wheel) seeded with fake personal data, a manifest
pointing the gateway at it, a gateway-issued token, and the gateway itself, running until
Ctrl-C. Each step is a small function so tests can drive them one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import subprocess
import warnings
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from random import Random
from typing import Any

import yaml

from lockgate.config.model import Manifest
from lockgate.errors import LockgateError
from lockgate.model import PrincipalKind

DEMO_ROWS = 500
# Orders: enough rows that reading them all needs a reviewer (`BULK_ROWS`).
ORDER_ROWS = 5000
BULK_ROWS = 1000
ADMIN, ADMIN_GROUP = "admin", "admins"
FAKER_SEED = 6432
DATABASE = "demo"
RESOURCE = "demo"
SUBJECT = "analyst"
GROUP = "analysts"
TOKEN_TTL_SECONDS = 8 * 3600
DEFAULT_PORT = 6432
# The admin console (the demo prints a token of ADMIN to sign in to it).
DEFAULT_ADMIN_PORT = 8443
LISTEN_HOST = "127.0.0.1"
MANIFEST_NAME = "lockgate.yaml"
PGDATA_NAME = "pgdata"

Echo = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class DemoError(LockgateError):
    """A demo step failed; `message` and `hint` say which and what to do."""


# --- the embedded PostgreSQL --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmbeddedPostgres:
    """A running pgserver instance. It listens on a unix socket only: `socket_dir` + `port`."""

    pgdata: Path
    socket_dir: Path
    port: int
    version: str
    # The OS account pgserver runs postgres as (it refuses root); None means the current user.
    system_user: str | None
    superuser: str = "postgres"

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / f".s.PGSQL.{self.port}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with the wheel's own psql (stops at the first error); return unaligned output."""
        from pgserver._commands import POSTGRES_BIN_PATH

        cmd = [
            str(POSTGRES_BIN_PATH / "psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            self.superuser,
            "-d",
            database,
        ]
        done = subprocess.run(cmd, input=sql, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise DemoError(
                f"the embedded PostgreSQL refused the demo's SQL: {done.stderr.strip()}",
                hint=f"see {self.pgdata / 'log'}; delete {self.pgdata} to start afresh",
            )
        return done.stdout

    def is_running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists() and self.socket_path.exists()

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are ended) and wait until it is down."""
        from pgserver._commands import POSTGRES_BIN_PATH

        if not (self.pgdata / "postmaster.pid").exists():
            return
        subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.pgdata), "-w", "-m", "fast", "stop"],
            user=self.system_user,
            capture_output=True,
            check=False,
            timeout=60,
        )


def start_embedded_postgres(pgdata: Path, echo: Echo = _quiet) -> EmbeddedPostgres:
    """Start (initialising on first use, reusing otherwise) the embedded server in `pgdata`."""
    pgdata = pgdata.expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    if (pgdata / "PG_VERSION").exists():
        echo(f"Starting the embedded PostgreSQL (reusing {_shown(pgdata)})...")
    else:
        echo(f"Initialising an embedded PostgreSQL in {_shown(pgdata)} (first run only)...")
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); pgserver copes.
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import PostgresServer

        # Not get_server(): it caches handles per process and would hand back a stopped one.
        # cleanup_mode=None: we stop the server ourselves, also when an earlier demo crashed
        # and left a stale handle behind (pgserver would then never stop it).
        pgdata.mkdir(exist_ok=True)
        try:
            server = PostgresServer(pgdata, cleanup_mode=None)
        except (subprocess.SubprocessError, OSError, AssertionError) as exc:
            raise DemoError(
                f"the embedded PostgreSQL did not start ({type(exc).__name__})",
                hint=f"see {pgdata / 'log'}; delete {pgdata} to start afresh",
            ) from exc
    info = server.get_postmaster_info()
    if info.socket_dir is None or info.port is None:
        raise DemoError("the embedded PostgreSQL reported no unix socket")
    version = (pgdata / "PG_VERSION").read_text().strip()
    return EmbeddedPostgres(
        pgdata=pgdata,
        socket_dir=info.socket_dir,
        port=info.port,
        version=version,
        system_user=server.system_user,
        superuser=server.postgres_user,
    )


# --- fake personal data ---------------------------------------------------------------------


def luhn_check_digit(body: str) -> str:
    """The digit that makes `body` + digit pass the Luhn check."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # these positions are doubled once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    """Whether a digit string passes the Luhn check."""
    return number.isdigit() and luhn_check_digit(number[:-1]) == number[-1]


_CARD_PREFIXES = ("4", "51", "52", "53", "54", "55", "6011")  # Visa, Mastercard, Discover


def card_number(rng: Random) -> str:
    """A 16-digit, Luhn-valid card number with a real-world issuer prefix."""
    prefix = rng.choice(_CARD_PREFIXES)
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(15 - len(prefix)))
    return body + luhn_check_digit(body)


@dataclass(frozen=True, slots=True)
class Customer:
    full_name: str
    email: str
    phone: str
    ssn: str
    card_number: str
    city: str
    created_at: datetime


def fake_customers(count: int = DEMO_ROWS, seed: int = FAKER_SEED) -> list[Customer]:
    """`count` realistic US customers; the same list for the same seed."""
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(seed)
    start, end = datetime(2021, 1, 1, tzinfo=UTC), datetime(2025, 6, 30, tzinfo=UTC)
    seen: set[str] = set()
    out: list[Customer] = []
    for _ in range(count):
        first, last = fake.first_name(), fake.last_name()
        local = re.sub(r"[^a-z.]", "", f"{first}.{last}".lower())
        email = f"{local}@{fake.free_email_domain()}"
        n = 1
        while email in seen:
            n += 1
            email = f"{local}{n}@{fake.free_email_domain()}"
        seen.add(email)
        out.append(
            Customer(
                full_name=f"{first} {last}",
                email=email,
                phone=fake.phone_number(),
                ssn=fake.ssn(),
                card_number=card_number(fake.random),
                city=fake.city(),
                created_at=fake.date_time_between_dates(start, end, tzinfo=UTC),
            )
        )
    return out


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_CREATE_CUSTOMERS = """
CREATE TABLE customers (
    id serial PRIMARY KEY,
    full_name text NOT NULL,
    email text NOT NULL,
    phone text,
    ssn text,
    card_number text,
    city text,
    created_at timestamptz NOT NULL
);
COMMENT ON TABLE customers IS 'Fake personal data seeded by lockgate demo';
"""


def seed_customers(pg: EmbeddedPostgres, echo: Echo = _quiet) -> int:
    """Create the `demo` database and its `customers` table of DEMO_ROWS rows, unless present."""
    exists = pg.psql(f"SELECT 1 FROM pg_database WHERE datname = {_literal(DATABASE)}").strip()
    if not exists:
        pg.psql(f"CREATE DATABASE {DATABASE}")
    has_table = pg.psql("SELECT to_regclass('public.customers') IS NOT NULL", DATABASE).strip()
    if has_table == "t":
        count = int(pg.psql("SELECT count(*) FROM customers", DATABASE).strip())
        if count == DEMO_ROWS:
            echo(f"Table customers already holds {count} rows.")
            return count
    echo(f"Seeding {DEMO_ROWS} customers with fake personal data...")
    rows = ",\n".join(
        "("
        + ", ".join(
            _literal(v)
            for v in (
                c.full_name,
                c.email,
                c.phone,
                c.ssn,
                c.card_number,
                c.city,
                c.created_at.isoformat(),
            )
        )
        + ")"
        for c in fake_customers()
    )
    pg.psql(
        "BEGIN;\nDROP TABLE IF EXISTS customers;\n"
        + _CREATE_CUSTOMERS
        + "INSERT INTO customers (full_name, email, phone, ssn, card_number, city, created_at)"
        + f" VALUES\n{rows};\nCOMMIT;\n",
        DATABASE,
    )
    count = int(pg.psql("SELECT count(*) FROM customers", DATABASE).strip())
    echo(f"Seeded {count} rows.")
    return count


_SEED_ORDERS = f"""
BEGIN;
DROP TABLE IF EXISTS orders;
CREATE TABLE orders (
    id serial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers (id),
    amount numeric(10, 2) NOT NULL,
    status text NOT NULL,
    ordered_at timestamptz NOT NULL
);
INSERT INTO orders (customer_id, amount, status, ordered_at)
SELECT 1 + (g * 7919) % {DEMO_ROWS}, round((5 + (g * 104729) % 49500 / 100.0)::numeric, 2),
       (ARRAY['paid', 'shipped', 'refunded'])[1 + g % 3],
       timestamptz '2024-01-01' + g * interval '97 minutes'
FROM generate_series(1, {ORDER_ROWS}) g;
ANALYZE orders;
COMMIT;
"""


def seed_orders(pg: EmbeddedPostgres, echo: Echo = _quiet) -> int:
    """Create the `orders` table (ORDER_ROWS rows over the customers), unless present."""
    has_table = pg.psql("SELECT to_regclass('public.orders') IS NOT NULL", DATABASE).strip()
    if has_table != "t" or int(pg.psql("SELECT count(*) FROM orders", DATABASE)) != ORDER_ROWS:
        echo(f"Seeding {ORDER_ROWS} orders...")
        pg.psql(_SEED_ORDERS, DATABASE)
    return int(pg.psql("SELECT count(*) FROM orders", DATABASE).strip())


# --- the manifest --------------------------------------------------------------------------


def port_is_free(host: str, port: int) -> bool:
    """Whether a listener could bind host:port now (as asyncio would, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def choose_port(wanted: int, host: str = LISTEN_HOST, attempts: int = 100) -> int:
    """`wanted` if it is free, else the next free port above it."""
    for port in range(wanted, min(wanted + attempts, 65536)):
        if port_is_free(host, port):
            return port
    raise DemoError(
        f"no free port in {wanted}..{wanted + attempts - 1} on {host}", hint="pass --port N"
    )


def manifest_data(
    pg: EmbeddedPostgres, port: int, admin_port: int = DEFAULT_ADMIN_PORT
) -> dict[str, Any]:
    """The demo manifest as plain data (validated against the schema before it is written)."""
    return {
        "version": 1,
        "state": {"url": "sqlite:///state/lockgate.db", "dir": "state"},
        "listeners": [
            {
                "name": "postgres",
                "protocol": "postgres",
                "address": f"{LISTEN_HOST}:{port}",
                # No cert/key: the gateway generates a self-signed pair under state/.
                "tls": {"enabled": True},
                "workers": 1,
            }
        ],
        "resources": [
            {
                "name": RESOURCE,
                "type": "postgres",
                "description": "Embedded demo PostgreSQL: a customers table of fake personal data",
                "upstream": {
                    # A unix-socket directory (libpq style): pgserver listens on no TCP port.
                    "host": str(pg.socket_dir),
                    "port": pg.port,
                    "database": DATABASE,
                    "user": pg.superuser,
                    # Local trust auth over the socket: no password, and no TLS on a unix socket.
                    "tls": {"mode": "disable"},
                },
            }
        ],
        # The analyst sees customers' personal data masked, whatever the query.
        "masking": {
            "rules": [
                {
                    "name": "demo-pii",
                    "resources": [RESOURCE],
                    "subjects": [SUBJECT],
                    "columns": [
                        {"column": "public.customers.ssn", "strategy": "partial"},
                        {"column": "public.customers.card_number", "strategy": "partial"},
                        {"column": "public.customers.email", "strategy": "partial"},
                        {"column": "public.customers.phone", "strategy": "redact"},
                    ],
                    "detect": ["email", "ssn", "card"],
                }
            ]
        },
        "access": [
            {
                "name": "analysts-reach-demo",
                "resources": [RESOURCE],
                "groups": [GROUP],
                # Read-only in depth: the upstream session itself refuses writes.
                "read_only": True,
            }
        ],
        # The shipped rule set: no DDL, TRUNCATE, unbounded writes, server files, ...
        "guardrails": {
            "rules": [
                {"use": "protect-production", "resources": [RESOURCE]},
                # Bulk reads by analysts wait for a reviewer (`lockgate reviews approve`).
                {
                    "name": "bulk-reads",
                    "resources": [RESOURCE],
                    "groups": [GROUP],
                    "match": {"kinds": ["select"], "reads": ["*"], "rows_over": BULK_ROWS},
                    "action": "review",
                },
            ]
        },
        "approvals": {
            "rules": [
                {
                    "name": "demo-reviews",
                    "resources": [RESOURCE],
                    "requests": ["statement"],
                    "guardrails": ["bulk-reads"],
                    "reviewers": [ADMIN_GROUP],
                }
            ]
        },
        # The admin API and web console (self-signed TLS); group `admins` administers it.
        "admin": {
            "listen": f"{LISTEN_HOST}:{admin_port}",
            "roles": {"admin": [ADMIN_GROUP]},
        },
    }


_MANIFEST_HEADER = """\
# Written by `lockgate demo` (rewritten on each run; copy it elsewhere to experiment).
# Listener: PostgreSQL with TLS (self-signed), resource `demo` -> the embedded server,
# members of group `analysts` may reach it, read-only, under the `protect-production`
# guardrails. State (audit, keys, TLS material): ./state
"""


def write_manifest(
    demo_dir: Path, pg: EmbeddedPostgres, port: int, admin_port: int = DEFAULT_ADMIN_PORT
) -> Path:
    """Write `demo_dir/lockgate.yaml` for the embedded server and listener ports."""
    data = manifest_data(pg, port, admin_port)
    Manifest.model_validate(data)  # a bug here should fail now, not in the loader
    path = demo_dir / MANIFEST_NAME
    demo_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(_MANIFEST_HEADER + yaml.safe_dump(data, sort_keys=False))
    return path


# --- token, gateway, output ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoToken:
    token: str
    expires_at: datetime | None


def issue_demo_token(manifest: Manifest) -> DemoToken:
    """A gateway token for `analyst` in group `analysts`, valid for 8 hours."""
    return _issue(manifest, SUBJECT, GROUP)


def issue_admin_token(manifest: Manifest) -> DemoToken:
    """A gateway token for the demo's `admin` (group `admins`), valid for 8 hours."""
    return _issue(manifest, ADMIN, ADMIN_GROUP)


def _issue(manifest: Manifest, subject: str, group: str) -> DemoToken:
    from lockgate.identity.tokens import GatewayTokenAuthority
    from lockgate.store import open_engine

    engine = open_engine(manifest.state_url)
    try:
        issued = GatewayTokenAuthority(manifest, engine).issue(
            subject, [group], ttl_seconds=TOKEN_TTL_SECONDS, kind=PrincipalKind.HUMAN
        )
    finally:
        engine.dispose()
    return DemoToken(token=issued.token, expires_at=issued.expires_at)


def psql_line(host: str, port: int, token: str) -> str:
    """The ready-to-paste psql command for the demo resource."""
    return (
        f'psql "host={host} port={port} dbname={RESOURCE} user={SUBJECT} '
        f'password={token} sslmode=require"'
    )


def pgpassword_line(host: str, port: int, token: str) -> str:
    return (
        f"PGPASSWORD={token} psql "
        f'"host={host} port={port} dbname={RESOURCE} user={SUBJECT} sslmode=require"'
    )


def _shown(path: Path) -> str:
    """A path relative to the working directory when it is under it (shorter to paste)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def _bound(gateway: Any) -> list[tuple[str, int]]:
    addrs = gateway.bound_addresses
    if callable(addrs):
        addrs = addrs()
    return [(str(h), int(p)) for h, p, *_ in addrs]


async def serve_until_signalled(
    manifest: Manifest, on_ready: Callable[[list[tuple[str, int]]], None]
) -> None:
    """Run the gateway in this process until SIGINT or SIGTERM, then stop it."""
    from lockgate.proxy.server import Gateway

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        gateway = Gateway(manifest)
        try:
            await gateway.start()
        except OSError as exc:
            await gateway.stop()
            listener = manifest.listeners[0]
            raise DemoError(
                f"the gateway cannot listen on {listener.address}: {exc.strerror or exc}",
                hint="pass another port with --port N",
            ) from exc
        try:
            on_ready(_bound(gateway))
            await stop.wait()
        finally:
            await gateway.stop()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """During the blocking setup steps, treat SIGTERM like Ctrl-C so cleanup still runs."""

    def _raise(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ready_text(
    demo_dir: Path,
    pg: EmbeddedPostgres,
    manifest_path: Path,
    token: DemoToken,
    host: str,
    port: int,
    admin_url: str | None = None,
    admin_token: DemoToken | None = None,
) -> str:
    cfg = _shown(manifest_path)
    until = f" (until {token.expires_at:%Y-%m-%d %H:%M} UTC)" if token.expires_at else ""
    return "\n".join(
        [
            "",
            "Lockgate demo is running:",
            f"  gateway     postgres://{host}:{port}  TLS (self-signed), resource '{RESOURCE}'",
            f"  PostgreSQL  {pg.version}, embedded, unix socket {pg.socket_path}",
            f"              database '{DATABASE}', table customers ({DEMO_ROWS} fake people)",
            f"  manifest    {cfg}  (state in {_shown(demo_dir / 'state')})",
            f"  token       subject '{SUBJECT}', group '{GROUP}', valid 8h{until}",
            "",
            "Connect through the gateway:",
            f"  {psql_line(host, port, token.token)}",
            "or with the token in the environment (CI jobs, scripts):",
            f"  {pgpassword_line(host, port, token.token)}",
            "",
            "Masked for analyst: ssn, card_number, email, phone (also when renamed or computed):",
            "  SELECT * FROM customers LIMIT 5",
            "",
            "Guardrails (protect-production) and read-only access refuse, for example:",
            "  DROP TABLE customers;  DELETE FROM customers;  UPDATE customers SET email = NULL;",
            "",
            f"Reads of more than {BULK_ROWS:,} rows wait for a reviewer (orders: {ORDER_ROWS:,}):",
            "  SELECT * FROM orders;               -- held before it runs (planner estimate)",
            "  SELECT * FROM orders WHERE id % 2 = 0;   -- paused mid-stream at 1,000 rows",
            "Approve as the demo's admin (ID: in psql's NOTICE, or `lockgate reviews list`):",
            f"  lockgate reviews approve ID --reason ok --as {ADMIN} --group {ADMIN_GROUP}"
            f" -c {cfg}",
            "",
            "Then see what was recorded:",
            f"  lockgate audit sessions -c {cfg}",
            f"  lockgate audit show <SESSION> -c {cfg}",
            "",
            *_admin_lines(admin_url, admin_token),
            "Press Ctrl-C to stop.",
        ]
    )


def _admin_lines(url: str | None, token: DemoToken | None) -> list[str]:
    if url is None or token is None:
        return []
    return [
        "Admin console (reviews, sessions, audit), TLS self-signed:",
        f"  {url}/  -> 'Sign in with a token' and paste the admin token:",
        f"  {token.token}",
        f"  (subject '{ADMIN}', group '{ADMIN_GROUP}': approves held reads there too; "
        f"API: {url}/api/docs)",
        "",
    ]


def run_demo(demo_dir: Path, port: int = DEFAULT_PORT, echo: Echo = print) -> None:
    """The whole demo: start, seed, configure, issue, serve until a signal, stop everything."""
    from lockgate.config.loader import load_manifest

    demo_dir = demo_dir.expanduser()
    demo_dir.mkdir(parents=True, exist_ok=True)
    pg: EmbeddedPostgres | None = None
    try:
        with _sigterm_as_interrupt():
            pg = start_embedded_postgres(demo_dir / PGDATA_NAME, echo)
            seed_customers(pg, echo)
            seed_orders(pg, echo)
            chosen = choose_port(port)
            if chosen != port:
                echo(f"Port {port} on {LISTEN_HOST} is taken; the gateway uses {chosen} instead.")
            admin_port = choose_port(max(DEFAULT_ADMIN_PORT, chosen + 1))
            manifest_path = write_manifest(demo_dir, pg, chosen, admin_port)
            manifest = load_manifest(manifest_path)
            token = issue_demo_token(manifest)
            admin_token = issue_admin_token(manifest)
        echo("Starting the gateway...")

        def ready(addresses: list[tuple[str, int]]) -> None:
            host, bound_port = addresses[0] if addresses else (LISTEN_HOST, chosen)
            assert pg is not None
            admin_url = manifest.admin.base_url() if manifest.admin else None
            echo(
                _ready_text(
                    demo_dir, pg, manifest_path, token, host, bound_port, admin_url, admin_token
                )
            )

        run_event_loop(serve_until_signalled(manifest, ready))
        echo("\nGateway stopped.")
    finally:
        if pg is not None:
            pg.stop()
            echo("Embedded PostgreSQL stopped.")
