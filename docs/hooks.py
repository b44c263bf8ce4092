"""MkDocs hooks: the configuration and command-line reference pages, generated from the code.

A page holds a marker line (``<!-- generated: configuration -->`` or ``<!-- generated: cli -->``); the
hook replaces it with tables built from ``medkge.config``'s dataclass fields (type, default, help, limits)
and from ``medkge.cli.build_parser()``, so the pages list every option the code has, and no other.
tests/test_docs.py checks the generated text against ``medkge.config.all_keys()`` and the parser.

``<!-- include: PATH -->`` (a page at the top of docs/) is replaced by the file PATH of the repository,
its links into docs/ rewritten to work from the page: benchmarks/README.md stays beside its scripts.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

CONFIG_MARKER = "<!-- generated: configuration -->"
CLI_MARKER = "<!-- generated: cli -->"
INCLUDE = re.compile(r"^<!-- include: (\S+) -->$", re.MULTILINE)
DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """MkDocs event: replace the markers of a page with the generated reference."""
    if CONFIG_MARKER in markdown:
        markdown = markdown.replace(CONFIG_MARKER, config_reference())
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if HTTP_MARKER in markdown:
        markdown = markdown.replace(HTTP_MARKER, http_reference())
    return INCLUDE.sub(lambda match: include(match.group(1)), markdown)


def include(path: str) -> str:
    """The file ``path`` of the repository, its relative links into docs/ made relative to docs/."""
    source = ROOT / path

    def relink(match: re.Match) -> str:
        target, hash_, anchor = match.group(2).partition("#")
        if not target or "://" in target:
            return match.group(0)
        try:
            inside = (source.parent / target).resolve().relative_to(DOCS)
        except ValueError:
            return match.group(0)
        return f"{match.group(1)}({inside.as_posix()}{hash_}{anchor})"

    return re.sub(r"(\[[^\]]*\])\(([^)\s]+)\)", relink, source.read_text())


# ---- configuration ----------------------------------------------------------------------------------


def config_reference() -> str:
    """One table per section of the configuration: key, type, default, help."""
    from medkge.config import Config, describe

    fields = dict(_config_fields(Config, ""))
    sections: dict[str, list[str]] = {}
    for key, default, help_text in describe():
        section = key.rpartition(".")[0]
        hint, meta = fields[key]
        row = [f"`{key}`", _type_text(hint, meta), f"`{_value_text(default)}`", _cell(help_text)]
        sections.setdefault(section, []).append("| " + " | ".join(row) + " |")
    parts = []
    for section, rows in sections.items():
        title = f"`{section}`" if section else "Top level"
        parts += [f"### {title}", "", "| key | type | default | what it does |", "|---|---|---|---|", *rows, ""]
    return "\n".join(parts)


def _config_fields(cls: type, prefix: str) -> typing.Iterator[tuple[str, tuple[Any, dict]]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _config_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, (hints[f.name], dict(f.metadata))


def _type_text(hint: Any, meta: dict) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    nullable = origin in (typing.Union, types.UnionType) and type(None) in args
    if nullable:
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        text = " or ".join(f"`{a}`" for a in args)
    elif "choices" in meta:
        text = " or ".join(f"`{_value_text(c)}`" for c in meta["choices"])
    elif origin is list:
        text = f"list of {args[0].__name__}"
    else:
        text = hint.__name__
    limits = [f"{sign} {meta[name]}" for name, sign in (("gt", ">"), ("min", ">="), ("max", "<=")) if name in meta]
    if limits:
        text += ", " + ", ".join(limits)
    return text + (", or `null`" if nullable else "")


def _value_text(value: Any) -> str:
    """A default as YAML writes it; a long evenly spaced list as its first, second and last."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        steps = {b - a for a, b in itertools.pairwise(value)}
        if len(value) > 4 and len(steps) == 1:
            return f"[{value[0]}, {value[1]}, ..., {value[-1]}]"
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell (and not read as HTML)."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")


# ---- command line -----------------------------------------------------------------------------------


def cli_reference() -> str:
    """A table of the commands, then each command's usage, description and options."""
    from medkge.cli import build_parser

    parser = build_parser()
    commands = _subcommands(parser)
    parts = ["| command | what it does |", "|---|---|"]
    parts += [f"| [`medkge {name}`](#medkge-{name}) | {_cell(help_text)} |" for name, help_text, _ in commands]
    parts.append("")
    for name, help_text, sub in commands:
        parts += [f"## `medkge {name}`", "", help_text[:1].upper() + help_text[1:] + ".", ""]
        if sub.description:
            parts += ["```text", sub.description.strip("\n"), "```", ""]
        parts += ["```text", _usage(sub), "```", ""]
        parts += ["| argument | default | what it does |", "|---|---|---|"]
        for action in sub._actions:  # argparse keeps no public list of a parser's arguments
            if isinstance(action, argparse._HelpAction):
                continue
            parts.append(f"| {_argument_text(action)} | {_default_text(action)} | {_cell(_help_text(action))} |")
        parts.append("")
    return "\n".join(parts)


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every subcommand, in the order ``medkge --help`` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return [(name, helps[name], sub) for name, sub in action.choices.items()]
    return []


def _usage(sub: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(sub.prog, width=100)
    formatter.add_usage(sub.usage, sub._actions, sub._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _argument_text(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    takes_value = action.nargs != 0
    metavar = action.metavar or (("{" + ",".join(map(str, action.choices)) + "}") if action.choices else None)
    metavar = metavar or action.dest.upper()
    names = ", ".join(f"`{name} {metavar}`" if takes_value else f"`{name}`" for name in action.option_strings)
    return names.replace("|", "\\|")


def _default_text(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if action.default in (None, False, [], argparse.SUPPRESS) or action.nargs == 0:
        return ""
    return f"`{action.default}`"


def _help_text(action: argparse.Action) -> str:
    text = action.help or ""
    if action.choices and action.option_strings:
        text += (" " if text else "") + "(one of " + ", ".join(map(str, action.choices)) + ")"
    return text


# ---- the HTTP API ---------------------------------------------------------------------------------------

HTTP_MARKER = "<!-- generated: http-api -->"


def http_reference() -> str:
    """The server's routes from the OpenAPI schema it publishes (an example model: RotatE, dims 1 to 640, the
    default limits; a served model's own bounds are in its /openapi.json and ``medkge serve RUN --openapi``)."""
    from medkge.deploy import LabelledModel
    from medkge.model import CroppableModel
    from medkge.server import create_app

    model = CroppableModel("rotate", 3, 1, [10, 640])
    schema = create_app(LabelledModel(model, ["a", "b", "c"], ["r"])).openapi()
    lines = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            lines += [f"#### `{method.upper()} {path}`", "", operation.get("summary", ""), ""]
            parameters = operation.get("parameters", [])
            if parameters:
                lines += ["| parameter | type | required | description |", "|---|---|---|---|"]
                for p in parameters:
                    lines.append(
                        f"| `{p['name']}` | {_schema_text(p['schema'])} | {'yes' if p.get('required') else 'no'} "
                        f"| {_cell(p.get('description', ''))} |"
                    )
                lines.append("")
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                lines += [f"Body: `{body['$ref'].rsplit('/', 1)[-1]}` (see `/openapi.json`).", ""]
            statuses = ", ".join(f"{s} ({_cell(r['description'])})" for s, r in operation["responses"].items())
            lines += [f"Answers: {statuses}.", ""]
    return "\n".join(lines)


def _schema_text(schema: dict[str, Any]) -> str:
    options = schema.get("anyOf", [schema])
    parts = []
    for s in options:
        if s.get("type") == "null":
            continue
        bounds = [f"{sign} {s[key]}" for key, sign in (("minimum", ">="), ("maximum", "<=")) if key in s]
        if "pattern" in s:
            bounds.append(f"`{s['pattern']}`")
        parts.append(s.get("type", "any") + (f" ({', '.join(bounds)})" if bounds else ""))
    return " or ".join(parts)
