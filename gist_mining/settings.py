"""Typed settings and their command-line options from one place: a dataclass field holds the default and the help,
and every parser that takes the setting is built from the field (``add_options``), so two stages cannot spell
or default the same option differently (tests/test_cli.py compares them).

    @dataclass(frozen=True)
    class SearchSettings:
        k: int = option(100, "candidates kept per anchor")

    add_options(parser, SearchSettings)          # --k, type int, default 100, the help above
    settings = from_args(SearchSettings, args)   # SearchSettings(k=args.k)
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, field, fields

from gist_mining.errors import UsageError

HELP, FLAG, PARSER = "help", "flag", "argparse"


def option(default, help: str, *, flag: str | None = None, **argparse_kwargs):
    """A settings field with its command-line option: ``--NAME`` (``flag``: another spelling), the help text and
    what argparse needs besides (``type``, ``choices``, ``metavar``; the type is the default's unless given)."""
    return field(default=default, metadata={HELP: help, FLAG: flag, PARSER: argparse_kwargs})


def parse_bytes(text: str, option: str = "--memory-budget") -> int:
    """'8G', '512M', '2.5GiB' or a number of bytes (``option``: the flag a bad one is named by)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in units else ""
    try:
        return int(float(value.removesuffix(unit)) * units[unit])
    except ValueError:
        raise UsageError(f"{option} must be a size like 8G or 512M, not {text!r}") from None


def flag_of(settings_field) -> str:
    return settings_field.metadata.get(FLAG) or "--" + settings_field.name.replace("_", "-")


def dest_of(settings_field) -> str:
    """Where argparse puts the option: its flag's name (``--rescore-model`` -> ``rescore_model``)."""
    return flag_of(settings_field)[2:].replace("-", "_")


def add_options(parser, cls, *, exclude=(), unset_default: tuple[str, ...] = ()) -> None:
    """One option per field of the dataclass ``cls`` that has help (less ``exclude``). Fields in ``unset_default``
    parse to None when not given (the help still says the default), so a caller can tell a given value from
    the default (``pipeline.mask --refilter``)."""
    for f in fields(cls):
        if HELP not in f.metadata or f.name in exclude:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        kwargs = dict(f.metadata[PARSER])
        help_text = f.metadata[HELP]
        if isinstance(default, bool):
            kwargs.setdefault("action", argparse.BooleanOptionalAction if default else "store_true")
        elif "action" not in kwargs:
            kwargs.setdefault("type", type(default) if default is not None else str)
        if f.name in unset_default:
            help_text += "" if isinstance(default, bool) else f" (default: {default})"
            default = None
        parser.add_argument(flag_of(f), dest=dest_of(f), default=default, help=help_text, **kwargs)


def from_args(cls, parsed: argparse.Namespace, **overrides):
    """The settings ``cls`` from parsed options (its fields absent from ``parsed`` keep their defaults): the one
    place where a command line's namespace becomes typed settings."""
    given = {f.name: getattr(parsed, dest_of(f)) for f in fields(cls) if f.init and hasattr(parsed, dest_of(f))}
    return cls(**{**given, **overrides})


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` says every option's default, except where there is none to say (None, a flag's False)."""

    def _get_help_string(self, action):
        if action.default in (None, [], argparse.SUPPRESS) or action.default is False \
                or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def to_argv(settings) -> list[str]:
    """The options that give ``settings`` (a dataclass built with ``option`` fields) from the defaults: a plan
    records the command that rebuilds it, whether a command line or Python made the settings."""
    argv = []
    for f in fields(settings):
        value = getattr(settings, f.name)
        if HELP not in f.metadata or value == f.default:
            continue
        if isinstance(value, bool):
            argv.append(flag_of(f) if value else "--no-" + flag_of(f)[2:])
        elif value is not None:
            argv += [flag_of(f), str(value)]
    return argv
