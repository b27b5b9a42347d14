"""Options declared once: a field with its help text, from which argparse is built.

This is TRL's way (``HfArgumentParser``), which ``trainer.config.TrainerConfig`` started: a
command's options are one dataclass, and every field carries its help, and where needed its
flag, choices or argparse type, through ``option(...)``::

    @dataclass
    class FeedOptions:
        limit: int | None = option(None, "feed only the first N")
        shuffle: bool = option(False, "shuffle before --limit")

    add_arguments(parser, FeedOptions)          # --limit N, --shuffle/--no-shuffle
    options = from_args(FeedOptions, parser.parse_args())

A flag left out keeps the field's default (argparse's own default is always ``None``), so no
default is written twice. ``bool`` fields become ``--x/--no-x``, ``list`` fields take one or
more values, ``Literal[...]`` fields (and ``choices=``) list their choices.

Pydantic settings classes (env ``CAI_*``) take part the same way: ``add_arguments(parser,
StackSettings, only=("state_dir",))`` adds ``--state-dir`` with the field's description as
help and the environment variable named; ``given(StackSettings, args)`` returns only the
flags that were given, so a flag left out leaves the environment's value alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_MISSING = dataclasses.MISSING


def option(default: Any = _MISSING, help: str = "", *, default_factory: Any = _MISSING,
           flag: str | None = None, aliases: tuple[str, ...] = (), choices: Iterable | None = None,
           type: Callable | None = None, metavar: str | None = None, positional: bool = False,
           nargs: str | None = None, exclusive: str | None = None, required: bool = False,
           cli: bool = True) -> Any:
    """A dataclass field that is also a command-line option.

    ``flag`` replaces the ``--field-name`` spelling, ``aliases`` adds short forms (``-o``);
    ``positional`` makes it an argument without a flag; ``exclusive`` puts it in a mutually
    exclusive group of that name (the group is required when one member says ``required``);
    ``cli=False`` keeps the field off the command line (set by code only).
    """
    metadata = {"help": help, "flag": flag, "aliases": tuple(aliases),
                "choices": tuple(choices) if choices is not None else None, "type": type,
                "metavar": metavar, "positional": positional, "nargs": nargs,
                "exclusive": exclusive, "required": required, "cli": cli}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def fraction(text: str) -> float:
    """A share in [0, 1] from the command line (an argparse ``type``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number; give a fraction such as 0.5") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]; give a fraction such as 0.5")
    return value


def integers(text: str) -> list[int]:
    """Comma-separated whole numbers from the command line (an argparse ``type``): ``1,4,16``."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of whole numbers, such as 1,4,16") from None


@dataclass
class _Spec:
    """One option, read from a dataclass field or a pydantic field."""

    name: str
    annotation: Any
    default: Any
    help: str
    meta: dict


def _specs(cls) -> list[_Spec]:
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        specs = []
        for f in dataclasses.fields(cls):
            if f.default is not _MISSING:
                default = f.default
            elif f.default_factory is not _MISSING:
                default = f.default_factory()
            else:
                default = None
            specs.append(_Spec(f.name, hints[f.name], default, f.metadata.get("help", ""),
                               dict(f.metadata)))
        return specs
    # A pydantic settings class: help from the description, the env variable named in it.
    prefix = cls.model_config.get("env_prefix", "")
    specs = []
    for name, info in cls.model_fields.items():
        extra = info.json_schema_extra
        meta = dict(extra) if isinstance(extra, dict) else {}
        default = (None if info.is_required() or info.default_factory is not None
                   else info.get_default())
        meta.setdefault("env", f"env {(prefix + name).upper()}")
        text = (info.description or "").rstrip(".")
        specs.append(_Spec(name, info.annotation, default, text, meta))
    return specs


def _unwrap(annotation: Any) -> tuple[Any, tuple | None, bool]:
    """(argparse type, choices from a Literal, whether it takes a list) of an annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _unwrap(args[0]) if len(args) == 1 else (str, None, False)
    if origin is typing.Literal:
        values = typing.get_args(annotation)
        return type(values[0]), values, False
    if origin in (list, tuple):
        inner, choices, _ = _unwrap(typing.get_args(annotation)[0])
        return inner, choices, True
    if annotation in (int, float, str, bool, Path):
        return annotation, None, False
    return str, None, False


def _shown(value: Any, separator: str = " ") -> str:
    if isinstance(value, (list, tuple)):
        return separator.join(str(v) for v in value)
    return str(value)


def add_arguments(parser, cls, *, only: Iterable[str] | None = None,
                  exclude: Iterable[str] = ()) -> None:
    """Add one argument per field of ``cls`` (a dataclass or a pydantic settings class)."""
    wanted = set(only) if only is not None else None
    skipped = set(exclude)
    groups: dict[str, Any] = {}
    specs = [s for s in _specs(cls) if s.meta.get("cli", True) and s.name not in skipped
             and (wanted is None or s.name in wanted)]
    for spec in specs:
        meta = spec.meta
        kind, literal, many = _unwrap(spec.annotation)
        choices = meta.get("choices") or literal
        help_text = spec.help
        notes = []
        if spec.default not in (None, False, "", [], ()) and "default" not in help_text.lower():
            notes.append(f"default: {_shown(spec.default, ',' if meta.get('type') else ' ')}")
        if meta.get("env"):
            notes.append(meta["env"])
        if notes:
            help_text = f"{help_text} ({', '.join(notes)})" if help_text else ", ".join(notes)
        kwargs: dict[str, Any] = {"help": help_text.replace("%", "%%")}
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = meta.get("type") or kind
            if choices:
                kwargs["choices"] = list(choices)
            if meta.get("nargs"):
                kwargs["nargs"] = meta["nargs"]
            elif many and not meta.get("type"):  # a list type that parses one token is one flag
                kwargs["nargs"] = "+"
        exclusive = meta.get("exclusive")
        target = parser
        if exclusive:
            if exclusive not in groups:
                required = any(s.meta.get("exclusive") == exclusive and s.meta.get("required")
                               for s in specs)
                groups[exclusive] = parser.add_mutually_exclusive_group(required=required)
            target = groups[exclusive]
        if meta.get("positional"):
            if not meta.get("required") or exclusive:
                kwargs.setdefault("nargs", "?")
            target.add_argument(spec.name, default=None, **kwargs)
            continue
        if meta.get("required") and not exclusive:
            kwargs["required"] = True
        flag = meta.get("flag") or "--" + spec.name.replace("_", "-")
        if meta.get("flag") and kind is not bool:
            kwargs.setdefault("metavar", flag.lstrip("-").upper().replace("-", "_"))
        target.add_argument(*meta.get("aliases", ()), flag, dest=spec.name, default=None, **kwargs)


def given(cls, args: argparse.Namespace, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The fields of ``cls`` (or of them, those in ``only``) that the command line gave (flags
    left out are not there)."""
    names = {s.name for s in _specs(cls)} & (set(only) if only is not None else {
        s.name for s in _specs(cls)})
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def from_args(cls, args: argparse.Namespace, base: Any = None) -> Any:
    """``cls`` (a dataclass) with the given flags over ``base`` (or the defaults)."""
    values = given(cls, args)
    return dataclasses.replace(base, **values) if base is not None else cls(**values)


def to_argv(options: Any) -> list[str]:
    """The flags that rebuild ``options`` (a dataclass) from its defaults: for a child process
    that parses the same options again."""
    argv: list[str] = []
    for spec in _specs(type(options)):
        value = getattr(options, spec.name)
        if not spec.meta.get("cli", True) or value == spec.default or value is None:
            continue
        if spec.meta.get("positional"):
            argv.append(str(value))
            continue
        flag = spec.meta.get("flag") or "--" + spec.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            separator = "," if spec.meta.get("type") else None
            argv += [flag, ",".join(map(str, value))] if separator else [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def add_command(sub: argparse._SubParsersAction, name: str, run: Callable[..., int], help: str,
                description: str | None = None, options: type | tuple[type, ...] = (),
                settings: dict[type, tuple[str, ...]] | None = None) -> argparse.ArgumentParser:
    """A subcommand whose flags are the fields of ``options`` (one dataclass or several) plus the
    named fields of settings classes.

    ``run`` is called with one object per options class, then one per settings class, built
    from the environment with the given flags on top.
    """
    classes = options if isinstance(options, tuple) else (options,)
    parser = sub.add_parser(name, help=help, description=description or help)
    for cls in classes:
        add_arguments(parser, cls)
    for cls, only in (settings or {}).items():
        add_arguments(parser, cls, only=only)

    def call(args: argparse.Namespace) -> int:
        # Only the fields exposed for a settings class: an option of the same name belongs to
        # the command (e.g. `cai eval --preference-model` beside ModelSettings' fields).
        made = [cls(**given(cls, args, only)) for cls, only in (settings or {}).items()]
        return run(*(from_args(cls, args) for cls in classes), *made)

    parser.set_defaults(func=call)
    return parser
