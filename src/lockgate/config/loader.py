"""Load `lockgate.yaml`: parse, validate, check cross-references, and say where every problem is.

Theory of operation: the text is parsed twice by PyYAML, once into plain data (for pydantic)
and once into its node tree (`yaml.compose`), which keeps the line of every key and value.
Every problem, whether from pydantic, from a semantic check or from the YAML itself, carries a
location path such as `("resources", 0, "upstream", "port")`; the node tree turns that path
into a line number. All problems are collected and raised together in one `ConfigError`, one
per line, as `FILE:LINE: key.path: what is wrong (expected ...)`.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from lockgate.config.model import (
    AccessRule,
    AnyListener,
    AnyResource,
    Listener,
    Manifest,
    Resource,
)
from lockgate.config.ssh import SshListener, SshResource
from lockgate.errors import ConfigError, SecretError
from lockgate.secrets.refs import parse_ref

Loc = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)

# Keys whose values must never be echoed in an error (they may hold a pasted secret).
_SENSITIVE = ("password", "secret", "token")

# Manifest fields that the loader sets and the YAML may not.
_LOADER_ONLY = tuple(name for name, f in Manifest.model_fields.items() if f.exclude)

# Sections whose entries are named, and what such a name is called in messages.
_NAMED_SECTIONS = {
    "listeners": "listener name",
    "resources": "resource name",
    "access": "access rule name",
}

_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", "*", ""})


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a manifest, with the key path it concerns."""

    loc: Loc
    message: str
    # Set when the line is known directly; otherwise it is found from `loc`.
    line: int | None = None
    # Another place the message refers to; its line is appended as "(see line N)".
    see: Loc | None = None


def load_manifest(path: Path) -> Manifest:
    """Read, validate and cross-check the manifest at `path`; ConfigError lists every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the manifest: {exc.strerror or exc}",
            hint="check the path given with -c and its permissions",
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the manifest is not UTF-8 text ({exc.reason})") from exc
    manifest = load_manifest_text(text, str(path))
    return manifest.model_copy(update={"base_dir": path.resolve().parent})


def load_manifest_text(text: str, source_name: str = "<manifest>") -> Manifest:
    """Validate manifest `text`; errors name `source_name` and lines. `base_dir` stays as given."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(_syntax_message(exc, source_name), hint=_SYNTAX_HINT) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source_name}:1: YAML syntax error: {exc}", hint=_SYNTAX_HINT) from exc

    if root is None or data is None:
        raise ConfigError(
            f"{source_name}:1: the manifest is empty "
            "(expected a mapping with keys such as listeners, resources and access)",
            hint="see docs/manifest.md or examples/lockgate.yaml for a complete example",
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source_name}:{_line(root)}: the manifest must be a mapping of keys "
            f"(version, state, listeners, identity, resources, access, audit), "
            f"got {_yaml_kind(data)}"
        )

    problems = list(_duplicate_keys(root))
    for key in _LOADER_ONLY:
        if key in data:
            # The model holds it, but only the loader may set it.
            data = {k: v for k, v in data.items() if k != key}
            allowed = ", ".join(_allowed_keys(()))
            problems.append(Problem((key,), f"unknown key (allowed keys: {allowed})"))
    manifest: Manifest | None = None
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        problems.extend(_schema_problems(exc))
    if manifest is not None:
        problems.extend(semantic_problems(manifest))
    else:
        problems.extend(_partial_semantic(data))
    if problems:
        raise ConfigError(
            _render(problems, root, source_name),
            hint="fix the lines above; docs/manifest.md describes every key",
        )
    assert manifest is not None
    return manifest


_SYNTAX_HINT = "check indentation (spaces, not tabs) and quoting around the line named"


def _syntax_message(exc: yaml.MarkedYAMLError, source_name: str) -> str:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 1
    what = exc.problem or "invalid YAML"
    if exc.context and exc.context_mark is not None and exc.context_mark is not mark:
        what += f" ({exc.context} at line {exc.context_mark.line + 1})"
    elif exc.context:
        what += f" ({exc.context})"
    return f"{source_name}:{line}: YAML syntax error: {what}"


# ---------------------------------------------------------------------------------------------
# Schema errors (pydantic) -> problems


# Tags pydantic puts in an error's location for a listener's `protocol` / a resource's `type`.
_TAGGED_SECTIONS: dict[str, dict[str, type[BaseModel]]] = {
    "listeners": {"postgres": Listener, "ssh": SshListener},
    "resources": {"postgres": Resource, "ssh": SshResource},
}


def _schema_problems(exc: ValidationError) -> Iterable[Problem]:
    for err in exc.errors(include_url=False):
        loc: Loc = tuple(err["loc"])
        tagged = _TAGGED_SECTIONS.get(str(loc[0])) if len(loc) > 2 else None
        if tagged and isinstance(loc[1], int) and loc[2] in tagged:
            model = tagged[str(loc[2])]
            loc = (loc[0], loc[1], *loc[3:])
            yield Problem(loc, _describe(err, loc, model))
            continue
        if err["type"] == "union_tag_invalid" and len(loc) == 2 and str(loc[0]) in _TAGGED_SECTIONS:
            key = "protocol" if loc[0] == "listeners" else "type"
            yield Problem(
                (*loc, key), f"expected one of: {', '.join(_TAGGED_SECTIONS[str(loc[0])])}"
            )
            continue
        yield Problem(loc, _describe(err, loc))


def _describe(err: Any, loc: Loc, item: type[BaseModel] | None = None) -> str:
    kind: str = err["type"]
    value = err.get("input")
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], item)
        if not allowed:
            return "unknown key"
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        guess = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown key ({guess}allowed keys: {', '.join(allowed)})"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"expected a mapping of keys, got {_yaml_kind(value)}"
    if kind == "too_short":
        n = err.get("ctx", {}).get("min_length", 1)
        return f"expected at least {n} item{'s' if n != 1 else ''}, got {len(value or [])}"
    if kind == "list_type":
        return f"expected a list (lines starting with '- '), got {_yaml_kind(value)}"
    msg: str = err["msg"]
    if kind == "value_error" and msg.startswith("Value error, "):
        return msg[len("Value error, ") :]
    if kind == "path_type":
        msg = "expected a file path"
    if not _is_sensitive(loc):
        if kind in ("literal_error", "enum") and isinstance(value, bool):
            msg += " (YAML reads yes/no/on/off/true/false as booleans; quote the value)"
        elif kind == "string_type" and isinstance(value, (bool, int, float)):
            msg += f" (got {value!r}; quote the value so YAML reads it as text)"
        elif isinstance(value, (str, int, float, bool)):
            msg += f" (got {value!r})"
        elif value is None:
            msg += " (got an empty value)"
    elif kind == "string_type":
        msg += " (quote the value so YAML reads it as text)"
    return msg


def _is_sensitive(loc: Loc) -> bool:
    keys = [p.lower() for p in loc if isinstance(p, str)]
    return bool(keys) and any(s in keys[-1] for s in _SENSITIVE)


def _allowed_keys(loc: Loc, item: type[BaseModel] | None = None) -> list[str]:
    """The keys the model at `loc` accepts (empty when `loc` is not a model).

    `item`: the model of a tagged list item (`loc[:2]`), when the error named it.
    """
    model = _model_at(loc[2:], item) if item is not None else _model_at(loc)
    if model is None:
        return []
    return [name for name, f in model.model_fields.items() if not f.exclude]


def _model_at(loc: Loc, root: type[BaseModel] = Manifest) -> type[BaseModel] | None:
    tp: Any = root
    for part in loc:
        tp = _strip_optional(tp)
        if isinstance(part, int):
            if typing.get_origin(tp) is not list:
                return None
            tp = typing.get_args(tp)[0]
        else:
            if not (isinstance(tp, type) and issubclass(tp, BaseModel)):
                return None
            field = tp.model_fields.get(part)
            if field is None:
                return None
            tp = field.annotation
    tp = _strip_optional(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _yaml_kind(value: object) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return "a text value"
    return type(value).__name__


# ---------------------------------------------------------------------------------------------
# YAML-level checks


def _duplicate_keys(node: yaml.Node, loc: Loc = ()) -> Iterable[Problem]:
    """PyYAML keeps the last of two equal keys silently; that hides mistakes, so report it."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            k = key.value if isinstance(key, yaml.ScalarNode) else None
            if isinstance(k, str):
                if k in seen:
                    yield Problem(
                        (*loc, k),
                        f"key appears twice in this mapping (first at line {seen[k]}; "
                        "only the last one would count)",
                        line=_line(key),
                    )
                else:
                    seen[k] = _line(key)
                yield from _duplicate_keys(value, (*loc, k))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, (*loc, i))


# ---------------------------------------------------------------------------------------------
# Semantic checks on a schema-valid manifest


def semantic_problems(manifest: Manifest) -> list[Problem]:
    """Cross-reference checks the schema alone cannot express."""
    names = {
        "listeners": list(enumerate(x.name for x in manifest.listeners)),
        "resources": list(enumerate(r.name for r in manifest.resources)),
        "access": list(enumerate(a.name for a in manifest.access)),
    }
    return _semantic(
        list(enumerate(manifest.listeners)),
        list(enumerate(manifest.resources)),
        list(enumerate(manifest.access)),
        names,
    )


def _partial_semantic(data: dict[str, Any]) -> list[Problem]:
    """Semantic checks on the entries that are valid by themselves, when the whole is not."""
    listeners = _valid_union_items(data.get("listeners"), TypeAdapter(AnyListener))
    resources = _valid_union_items(data.get("resources"), TypeAdapter(AnyResource))
    access = _valid_items(data.get("access"), AccessRule)
    # Names of entries that failed validation still count for uniqueness and references.
    names = {section: _raw_names(data.get(section)) for section in _NAMED_SECTIONS}
    return _semantic(listeners, resources, access, names)


def _raw_names(raw: object) -> list[tuple[int, str]]:
    items = raw if isinstance(raw, list) else []
    return [
        (i, item["name"])
        for i, item in enumerate(items)
        if isinstance(item, dict) and isinstance(item.get("name"), str)
    ]


def _valid_items(raw: object, model: type[M]) -> list[tuple[int, M]]:
    if not isinstance(raw, list):
        return []
    out: list[tuple[int, M]] = []
    for i, item in enumerate(raw):
        try:
            out.append((i, model.model_validate(item)))
        except ValidationError:
            continue
    return out


T = TypeVar("T")


def _valid_union_items(raw: object, adapter: TypeAdapter[T]) -> list[tuple[int, T]]:
    if not isinstance(raw, list):
        return []
    out: list[tuple[int, T]] = []
    for i, item in enumerate(raw):
        try:
            out.append((i, adapter.validate_python(item)))
        except ValidationError:
            continue
    return out


def _semantic(
    listeners: list[tuple[int, Listener | SshListener]],
    resources: list[tuple[int, Resource | SshResource]],
    access: list[tuple[int, AccessRule]],
    names: dict[str, list[tuple[int, str]]],
) -> list[Problem]:
    problems: list[Problem] = []
    for section, what in _NAMED_SECTIONS.items():
        problems += _unique(section, names[section], what)
    problems += _listener_addresses(listeners)
    resource_names = list(dict.fromkeys(name for _, name in names["resources"]))

    for i, lst in listeners:
        if not isinstance(lst, Listener):
            continue
        tls = lst.tls
        if tls.cert is not None and tls.key is None:
            problems.append(
                Problem(
                    ("listeners", i, "tls", "cert"),
                    "a certificate is set but no key (expected both cert and key, or neither "
                    "to use a generated self-signed pair)",
                )
            )
        if tls.key is not None and tls.cert is None:
            problems.append(
                Problem(
                    ("listeners", i, "tls", "key"),
                    "a key is set but no certificate (expected both cert and key, or neither "
                    "to use a generated self-signed pair)",
                )
            )

    for i, rule in access:
        for j, target in enumerate(rule.resources):
            if target == "*" or target in resource_names:
                continue
            msg = f"no resource named {target!r}"
            close = difflib.get_close_matches(target, resource_names, n=1)
            if close:
                msg += f" (did you mean {close[0]!r}?)"
            elif resource_names:
                msg += f" (expected one of: {', '.join(resource_names)}, or '*' for every resource)"
            else:
                msg += " (no resources are defined yet; add them under resources:)"
            problems.append(Problem(("access", i, "resources", j), msg))

    for i, res in resources:
        refs = {"password": res.upstream.password}
        if isinstance(res, SshResource):
            refs |= {"private_key": res.upstream.private_key, "passphrase": res.upstream.passphrase}
        for key, ref in refs.items():
            if ref is None:
                continue
            try:
                parse_ref(ref)
            except SecretError as exc:
                problems.append(Problem(("resources", i, "upstream", key), exc.message))
    return problems


def _unique(section: str, names: Sequence[tuple[int, str]], what: str) -> list[Problem]:
    first: dict[str, int] = {}
    out: list[Problem] = []
    for i, name in names:
        if name in first:
            out.append(
                Problem(
                    (section, i, "name"),
                    f"duplicate {what} {name!r}, expected unique names; "
                    f"first used by {section}[{first[name]}]",
                    see=(section, first[name], "name"),
                )
            )
        else:
            first[name] = i
    return out


def _listener_addresses(
    listeners: Sequence[tuple[int, Listener | SshListener]],
) -> list[Problem]:
    out: list[Problem] = []
    for n, (i, lst) in enumerate(listeners):
        for j, other in listeners[:n]:
            if other.port != lst.port:
                continue
            if other.host == lst.host:
                msg = f"{lst.address!r} is already used by listeners[{j}]"
            elif lst.host in _WILDCARD_HOSTS or other.host in _WILDCARD_HOSTS:
                msg = (
                    f"{lst.address!r} overlaps {other.address!r} of listeners[{j}] "
                    "(a wildcard host takes the port on every address)"
                )
            else:
                continue
            out.append(
                Problem(
                    ("listeners", i, "address"),
                    msg + ", expected each listener on its own port",
                    see=("listeners", j, "address"),
                )
            )
            break
    return out


# ---------------------------------------------------------------------------------------------
# Locations -> lines


def format_loc(loc: Loc) -> str:
    """`("resources", 0, "upstream", "port")` -> `resources[0].upstream.port`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def _render(problems: list[Problem], root: yaml.Node, source_name: str) -> str:
    lines: list[tuple[int, int, str]] = []
    for n, p in enumerate(problems):
        line = p.line if p.line is not None else _find_line(root, p.loc)
        message = p.message
        if p.see is not None:
            message += f" (see line {_find_line(root, p.see)})"
        lines.append((line, n, f"{source_name}:{line}: {format_loc(p.loc)}: {message}"))
    lines.sort()
    seen: set[str] = set()
    out: list[str] = []
    for _, _, text in lines:
        if text not in seen:
            seen.add(text)
            out.append(text)
    return "\n".join(out)


def _find_line(root: yaml.Node, loc: Loc) -> int:
    """The line of the deepest node `loc` reaches: the key when it exists, else its parent."""
    node = root
    line = _line(root)
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            match = None
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == part:
                    match = (key, value)  # the last one wins, as in PyYAML's constructor
            if match is None:
                return line
            line = _line(match[0])
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                return line
            node = node.value[part]
            line = _line(node)
        else:
            return line
    return line


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1
