"""Build argparse subcommands from typed Python functions, so help text and types have one source.

A command is a function whose parameters are:
- positional (before `*`): positional arguments; with a default, optional (`nargs="?"`);
- keyword-only: `--options` (`snake_case` -> `--kebab-case`);
- annotated with a dataclass: that dataclass's fields become options, and the function receives an
  instance (shared option groups such as the model options).

Types: str/int/float/Path, `X | None`, `Literal[...]` (choices), `list[X]` (repeatable option, or
`nargs="+"` when positional), bool (`--flag`; `--no-flag` when the default is True).
Help: the function's docstring (first line = summary), its Google-style `Args:` section for each
parameter, and a dataclass docstring's `Attributes:` section for its fields. Defaults are appended.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union

_SECTION = re.compile(r"^\s*(Args|Arguments|Attributes|Returns|Raises|Examples?|Exit codes):\s*$")


def parse_docstring(doc: str | None) -> tuple[str, str, dict[str, str]]:
    """Google-style docstring -> (summary, description without the Args/Attributes sections, {name: help})."""
    lines = inspect.cleandoc(doc or "").splitlines()
    summary = lines[0].strip() if lines else ""
    description: list[str] = []
    params: dict[str, str] = {}
    section, current, indent = None, None, None
    for line in lines:
        match = _SECTION.match(line)
        if match:
            section = match.group(1)
            current, indent = None, None
            if section not in ("Args", "Arguments", "Attributes"):
                description.append(line)
            continue
        if section in ("Args", "Arguments", "Attributes"):
            if not line.strip():
                continue
            lead = len(line) - len(line.lstrip())
            item = re.match(r"^\s*([\w, ]+?)(?:\s*\(.*?\))?:\s*(.*)$", line)
            if item and (indent is None or lead <= indent):
                indent = lead
                current = [n.strip() for n in item.group(1).split(",")]
                for name in current:
                    params[name] = item.group(2).strip()
            elif current:
                for name in current:
                    params[name] = (params[name] + " " + line.strip()).strip()
            continue
        description.append(line)
    return summary, "\n".join(description).strip(), params


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_param(parser: argparse.ArgumentParser, name: str, tp: Any, default: Any, positional: bool,
               help_text: str) -> None:  # fmt: skip
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    kwargs: dict[str, Any] = {"help": help_text or None}
    shown_default = default not in (None, False, inspect.Parameter.empty, [], ())
    if shown_default and help_text and "default" not in help_text:
        kwargs["help"] = f"{help_text} (default: {default})"
    if tp is bool:
        if positional:
            raise TypeError(f"bool parameter {name!r} must be keyword-only")
        if default is True:
            parser.add_argument(_flag("no_" + name), dest=name, action="store_false", help=kwargs["help"])
        else:
            parser.add_argument(_flag(name), dest=name, action="store_true", help=kwargs["help"])
        return
    if origin is Literal:
        choices = typing.get_args(tp)
        kwargs["choices"] = choices
        kwargs["type"] = type(choices[0])
    elif origin in (list, tuple):
        inner = _unwrap_optional(typing.get_args(tp)[0]) if typing.get_args(tp) else str
        kwargs["type"] = inner
        if positional:
            kwargs["nargs"] = "+" if default is inspect.Parameter.empty else "*"
        else:
            kwargs["action"] = "append"
            kwargs["default"] = None  # filled with a fresh list by the caller
    elif tp in (str, int, float, Path):
        kwargs["type"] = tp
    else:
        raise TypeError(f"parameter {name!r}: unsupported CLI type {tp!r}")
    if positional:
        if default is not inspect.Parameter.empty and "nargs" not in kwargs:
            kwargs["nargs"] = "?"
            kwargs["default"] = default
        parser.add_argument(name, metavar=name.upper(), **kwargs)
    else:
        if "action" not in kwargs:
            kwargs["default"] = None if default is inspect.Parameter.empty else default
            if default is inspect.Parameter.empty:
                kwargs["required"] = True
        parser.add_argument(_flag(name), dest=name, **kwargs)


def add_command(subparsers: Any, fn: Callable[..., int], name: str | None = None,
                epilog: str | None = None) -> argparse.ArgumentParser:  # fmt: skip
    """Add `fn` as a subcommand; parsing sets `func` to a wrapper that calls `fn` with typed values."""
    name = name or fn.__name__.removeprefix("cmd_").replace("_", "-")
    summary, description, docs = parse_docstring(fn.__doc__)
    parser = subparsers.add_parser(name, help=summary, description=description or summary, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    hints = typing.get_type_hints(fn)
    plan: list[tuple[str, Any]] = []  # (parameter name, dataclass type or None)
    lists: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        tp = hints[param.name]
        if dataclasses.is_dataclass(tp):
            group = parser.add_argument_group(parse_docstring(tp.__doc__)[0] or param.name)
            field_docs = parse_docstring(tp.__doc__)[2]
            field_hints = typing.get_type_hints(tp)
            for f in dataclasses.fields(tp):
                default = f.default if f.default is not dataclasses.MISSING else (
                    f.default_factory() if f.default_factory is not dataclasses.MISSING else inspect.Parameter.empty
                )  # fmt: skip
                _add_param(group, f.name, field_hints[f.name], default, False, field_docs.get(f.name, ""))  # type: ignore[arg-type]
                if typing.get_origin(_unwrap_optional(field_hints[f.name])) in (list, tuple):
                    lists.append(f.name)
            plan.append((param.name, tp))
            continue
        positional = param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD)
        _add_param(parser, param.name, tp, param.default, positional, docs.get(param.name, ""))
        if not positional and typing.get_origin(_unwrap_optional(tp)) in (list, tuple):
            lists.append(param.name)
        plan.append((param.name, None))

    def call(args: argparse.Namespace) -> int:
        values = vars(args)
        for key in lists:
            if values.get(key) is None:
                values[key] = []
        kwargs: dict[str, Any] = {}
        positional_args: list[Any] = []
        for pname, group in plan:
            if group is not None:
                kwargs[pname] = group(**{f.name: values[f.name] for f in dataclasses.fields(group)})
                continue
            param = inspect.signature(fn).parameters[pname]
            if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
                positional_args.append(values[pname])
            else:
                kwargs[pname] = values[pname]
        return fn(*positional_args, **kwargs)

    parser.set_defaults(func=call)
    return parser
