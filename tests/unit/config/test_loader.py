"""The manifest loader: valid manifests load; every mistake is reported with its line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from lockgate.config.loader import format_loc, load_manifest, load_manifest_text
from lockgate.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]

VALID = """\
version: 1
listeners:
  - name: pg
    address: 127.0.0.1:6432
resources:
  - name: orders
    upstream:
      host: db.example.com
      database: orders
      user: gateway
      password: env:ORDERS_PW
access:
  - name: support
    resources: [orders]
    groups: [support]
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_manifest_text(textwrap.dedent(text), "m.yaml")
    return info.value.message.splitlines()


def test_example_manifest_loads() -> None:
    manifest = load_manifest(REPO / "examples" / "lockgate.yaml")
    assert manifest.base_dir == (REPO / "examples").resolve()
    assert [r.name for r in manifest.resources] == ["orders-prod", "local-dev"]
    assert manifest.resources[0].upstream.tls.mode == "verify-full"
    assert manifest.listeners[0].address == "127.0.0.1:6432"
    assert manifest.state_url.startswith("sqlite:///" + str(REPO / "examples"))


def test_load_sets_base_dir(tmp_path: Path) -> None:
    path = tmp_path / "lockgate.yaml"
    path.write_text(VALID)
    manifest = load_manifest(path)
    assert manifest.base_dir == tmp_path.resolve()
    assert manifest.resource("orders") is not None


def test_bad_type_names_line_and_key() -> None:
    text = VALID.replace(
        "      host: db.example.com\n", "      host: db.example.com\n      port: 70000\n"
    )
    assert errors_of(text) == [
        "m.yaml:9: resources[0].upstream.port: Input should be less than or equal to 65535 "
        "(got 70000)"
    ]


def test_unquoted_number_where_text_is_expected() -> None:
    text = VALID.replace("database: orders", "database: 2024")
    assert errors_of(text) == [
        "m.yaml:9: resources[0].upstream.database: Input should be a valid string "
        "(got 2024; quote the value so YAML reads it as text)"
    ]


def test_unknown_key_lists_allowed_keys() -> None:
    text = VALID.replace("    groups: [support]", "    group: [support]")
    assert errors_of(text) == [
        "m.yaml:15: access[0].group: unknown key (did you mean 'groups'? "
        "allowed keys: name, resources, subjects, groups, read_only, requires_grant, when)"
    ]


def test_missing_required_key_points_at_parent() -> None:
    text = VALID.replace("      user: gateway\n", "")
    assert errors_of(text) == ["m.yaml:7: resources[0].upstream.user: required key is missing"]


def test_plain_password_is_refused_without_echoing_it() -> None:
    text = VALID.replace("password: env:ORDERS_PW", "password: hunter2")
    lines = errors_of(text)
    assert len(lines) == 1
    assert lines[0].startswith("m.yaml:11: resources[0].upstream.password: must be a credential")
    assert "hunter2" not in lines[0]


def test_numeric_password_is_not_echoed() -> None:
    lines = errors_of(VALID.replace("password: env:ORDERS_PW", "password: 987654"))
    assert lines[0].startswith("m.yaml:11: resources[0].upstream.password: ")
    assert "987654" not in "\n".join(lines)


def test_empty_reference_target() -> None:
    assert errors_of(VALID.replace("env:ORDERS_PW", "'store:'")) == [
        "m.yaml:11: resources[0].upstream.password: store: names no target "
        "(expected store: followed by a stored secret)"
    ]


def test_duplicate_resource_names_the_first_one() -> None:
    text = VALID.replace(
        "access:",
        "  - name: orders\n    upstream: {database: x, user: y}\naccess:",
    )
    assert errors_of(text) == [
        "m.yaml:12: resources[1].name: duplicate resource name 'orders', expected unique "
        "names; first used by resources[0] (see line 6)"
    ]


def test_access_rule_naming_unknown_resource() -> None:
    text = VALID.replace("resources: [orders]", "resources: [order, '*']")
    assert errors_of(text) == [
        "m.yaml:14: access[0].resources[0]: no resource named 'order' (did you mean 'orders'?)"
    ]


def test_duplicate_listener_name_and_address() -> None:
    text = VALID.replace(
        "\nresources:",
        "\n  - name: pg\n    address: 0.0.0.0:6432\nresources:",
    )
    assert errors_of(text) == [
        "m.yaml:5: listeners[1].name: duplicate listener name 'pg', expected unique names; "
        "first used by listeners[0] (see line 3)",
        "m.yaml:6: listeners[1].address: '0.0.0.0:6432' overlaps '127.0.0.1:6432' of "
        "listeners[0] (a wildcard host takes the port on every address), expected each "
        "listener on its own port (see line 4)",
    ]


def test_listener_cert_without_key_and_key_without_cert() -> None:
    text = """\
    listeners:
      - name: a
        address: 127.0.0.1:1
        tls:
          cert: a.crt
      - name: b
        address: 127.0.0.1:2
        tls: {key: b.key}
    """
    lines = errors_of(text)
    assert [line.split(": ", 2)[:2] for line in lines] == [
        ["m.yaml:5", "listeners[0].tls.cert"],
        ["m.yaml:8", "listeners[1].tls.key"],
    ]
    assert "no key" in lines[0]
    assert "no certificate" in lines[1]


def test_every_problem_is_reported_in_line_order() -> None:
    text = """\
    version: 2
    listeners:
      - name: pg
        adress: 127.0.0.1:6432
    resources:
      - name: a
        upstream: {database: d, user: u, port: web}
      - name: a
        upstream: {database: d}
    access:
      - {name: r, resources: [nope], subjects: [x]}
    """
    lines = errors_of(text)
    assert [line.split(": ")[0] for line in lines] == [
        "m.yaml:1",
        "m.yaml:4",
        "m.yaml:7",
        "m.yaml:8",
        "m.yaml:9",
        "m.yaml:11",
    ]
    assert "version" in lines[0]
    assert "duplicate resource name 'a'" in lines[3]
    assert "resources[1].upstream.user: required key is missing" in lines[4]


def test_duplicate_yaml_key() -> None:
    text = VALID + "audit:\n  record_parameters: true\n  record_parameters: false\n"
    assert errors_of(text) == [
        "m.yaml:18: audit.record_parameters: key appears twice in this mapping "
        "(first at line 17; only the last one would count)"
    ]


def test_yaml_boolean_hint() -> None:
    text = VALID.replace("      user: gateway\n", "      user: gateway\n      tls: {mode: off}\n")
    [line] = errors_of(text)
    assert line.startswith("m.yaml:11: resources[0].upstream.tls.mode: Input should be 'disable'")
    assert "quote the value" in line


def test_yaml_syntax_error_names_the_line() -> None:
    text = "version: 1\nresources:\n  - name: a\n   upstream: {}\n"
    [line] = errors_of(text)
    assert line.startswith("m.yaml:4: YAML syntax error: ")


def test_unclosed_bracket() -> None:
    [line] = errors_of("version: 1\naccess: [a\n")
    assert line.startswith("m.yaml:3: YAML syntax error: ")


def test_empty_and_non_mapping_manifests() -> None:
    assert errors_of("")[0].startswith("m.yaml:1: the manifest is empty")
    assert errors_of("\n\n- a\n")[0].startswith("m.yaml:3: the manifest must be a mapping")


def test_wrong_container_type() -> None:
    assert errors_of("resources: orders\n") == [
        "m.yaml:1: resources: expected a list (lines starting with '- '), got a text value"
    ]
    assert errors_of("state: [a]\n") == ["m.yaml:1: state: expected a mapping of keys, got a list"]


def test_base_dir_cannot_be_set_from_yaml() -> None:
    [line] = errors_of(VALID + "base_dir: /etc\n")
    assert line.startswith("m.yaml:16: base_dir: unknown key (allowed keys: version, state,")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the manifest"):
        load_manifest(tmp_path / "missing.yaml")


def test_format_loc() -> None:
    assert format_loc(("resources", 0, "upstream", "port")) == "resources[0].upstream.port"
    assert format_loc(()) == "(top level)"
