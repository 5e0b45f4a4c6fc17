"""What PostgreSQL's built-in names mean to guardrails: flags and the functions that raise them.

Data, not logic: `analyze.py` looks names up here. Function names are matched on their
last component, lower-cased (`pg_catalog.PG_READ_FILE` is `pg_read_file`).
"""

from __future__ import annotations

# Flags a statement may raise; guardrail rules match on these names.
UNBOUNDED_WRITE = "unbounded_write"
COPY_PROGRAM = "copy_program"
SERVER_FILE = "server_file"
LARGE_OBJECT = "large_object"
REMOTE_ACCESS = "remote_access"
ROLE_SWITCH = "role_switch"
ALTER_SYSTEM = "alter_system"
CREATE_FUNCTION = "create_function"
CREATE_EXTENSION = "create_extension"
DYNAMIC_SQL = "dynamic_sql"
READ_ONLY_ESCAPE = "read_only_escape"
FLAGS = frozenset(
    {
        UNBOUNDED_WRITE, COPY_PROGRAM, SERVER_FILE, LARGE_OBJECT, REMOTE_ACCESS, ROLE_SWITCH,
        ALTER_SYSTEM, CREATE_FUNCTION, CREATE_EXTENSION, DYNAMIC_SQL, READ_ONLY_ESCAPE,
    }
)  # fmt: skip

# Functions that read, list or write files on the database server (core and adminpack).
SERVER_FILE_FUNCTIONS = frozenset(
    {
        "pg_read_file", "pg_read_binary_file", "pg_stat_file", "pg_ls_dir", "pg_ls_logdir",
        "pg_ls_waldir", "pg_ls_tmpdir", "pg_ls_archive_statusdir", "pg_ls_logicalsnapdir",
        "pg_ls_logicalmapdir", "pg_ls_replslotdir", "pg_file_write", "pg_file_rename",
        "pg_file_unlink", "pg_file_sync", "pg_logdir_ls", "pg_file_read", "lo_import",
        "lo_export",
    }
)  # fmt: skip
# Large-object functions (lo_import/lo_export also touch server files).
LARGE_OBJECT_FUNCTIONS = frozenset(
    {
        "lo_import", "lo_export", "lo_open", "lo_close", "loread", "lowrite", "lo_lseek",
        "lo_lseek64", "lo_tell", "lo_tell64", "lo_truncate", "lo_truncate64", "lo_creat",
        "lo_create", "lo_unlink", "lo_get", "lo_put", "lo_from_bytea",
    }
)  # fmt: skip
# Functions that run SQL given as text: opaque to analysis.
DYNAMIC_SQL_FUNCTIONS = frozenset(
    {"query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema"}
)
# Extensions that reach other servers.
REMOTE_EXTENSIONS = frozenset({"dblink", "postgres_fdw"})
# PL/pgSQL tree keys that mean "runs a string as SQL".
PLPGSQL_DYNAMIC = frozenset({"PLpgSQL_stmt_dynexecute", "PLpgSQL_stmt_dynfors", "dynquery"})


def function_flags(name: str) -> frozenset[str]:
    """Flags a call of the function `name` (last component, lower-case) raises."""
    flags: set[str] = set()
    if name in SERVER_FILE_FUNCTIONS:
        flags.add(SERVER_FILE)
    if name in LARGE_OBJECT_FUNCTIONS:
        flags.add(LARGE_OBJECT)
    if name in DYNAMIC_SQL_FUNCTIONS:
        flags.add(DYNAMIC_SQL)
    if name.startswith(("dblink", "postgres_fdw_")):
        flags.add(REMOTE_ACCESS)
    return frozenset(flags)
