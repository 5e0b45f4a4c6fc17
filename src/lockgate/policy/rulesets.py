"""Guardrail rule sets shipped with Lockgate, referenced from a manifest with `use: NAME`.

Pure data in the manifest's own shape (`guardrails.rules` entries). The entry that uses a
set gives its scope (resources, subjects, groups) and mode; each rule is named
`SET/RULE` in refusals and in the audit trail.
"""

from __future__ import annotations

from typing import Any

_NO_SERVER_ESCAPES: list[dict[str, Any]] = [
    {
        "name": "no-server-files",
        "match": {"flags": ["server_file", "copy_program", "large_object"]},
        "message": "reading or writing files on the database server is not allowed",
    },
    {
        "name": "no-remote-access",
        "match": {"flags": ["remote_access"]},
        "message": "reaching other servers (dblink, postgres_fdw) is not allowed",
    },
    {
        "name": "no-role-switch",
        "match": {"flags": ["role_switch"]},
        "message": "switching roles (SET ROLE, SET SESSION AUTHORIZATION) is not allowed",
    },
    {
        "name": "no-alter-system",
        "match": {"flags": ["alter_system"]},
        "message": "changing the server configuration (ALTER SYSTEM) is not allowed",
    },
]

_WRITE_KINDS = [
    "insert", "update", "delete", "merge", "truncate", "copy_from", "ddl", "grant", "revoke",
    "call", "do", "create_table_as", "alter_system", "vacuum", "lock", "refreshmatview",
    "cluster", "reindex",
]  # fmt: skip

RULE_SETS: dict[str, list[dict[str, Any]]] = {
    # For production databases: data changes stay possible, damage at scale does not.
    "protect-production": [
        {
            "name": "no-ddl",
            "match": {"kinds": ["ddl"]},
            "message": "schema changes (CREATE/ALTER/DROP) are not allowed here; "
            "ship them as a reviewed migration",
        },
        {
            "name": "no-truncate",
            "match": {"kinds": ["truncate"]},
            "message": "TRUNCATE is not allowed here",
        },
        {
            "name": "no-unbounded-write",
            "match": {"flags": ["unbounded_write"]},
            "message": "UPDATE/DELETE without a WHERE clause that limits the rows "
            "(or with an always-true one) is not allowed; add a real condition",
        },
        *_NO_SERVER_ESCAPES,
        {
            "name": "no-new-code",
            "match": {"flags": ["create_function", "create_extension"]},
            "message": "creating functions, procedures or extensions is not allowed here",
        },
        {
            "name": "review-dynamic-sql",
            "match": {"flags": ["dynamic_sql"]},
            "action": "review",
            "message": "dynamic SQL (DO blocks, EXECUTE, query_to_xml) cannot be analysed "
            "and needs a reviewer's approval",
        },
        {
            "name": "no-grants",
            "match": {"kinds": ["grant", "revoke"]},
            "message": "changing privileges is not allowed here",
        },
    ],
    # Reads only: anything that changes data, schema, privileges or session safety.
    "read-only": [
        {
            "name": "no-writes",
            "match": {
                "kinds": _WRITE_KINDS,
            },
            "message": "this access is read-only",
        },
        {
            "name": "no-escapes",
            "match": {"flags": ["read_only_escape", "dynamic_sql", "create_function"]},
            "message": "this access is read-only: turning read-only mode off, dynamic SQL "
            "and new functions are not allowed",
        },
        *_NO_SERVER_ESCAPES,
    ],
}
