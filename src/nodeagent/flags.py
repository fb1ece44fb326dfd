"""Splitting a command line the way Go's spf13/pflag does, for agents that take upstream flags.

``--name=value`` and ``--name value`` for flags that take a value, ``--name`` or
``--name=true|false`` for boolean ones (a boolean never takes the next argument),
single-letter shorthands (``-v 3`` / ``-v=3`` / ``-v3``), ``_`` read as ``-`` in
names, and ``--`` ending the flags. Anything that is not a flag is an error.
"""

from __future__ import annotations

from typing import NamedTuple


def table(text: str) -> dict[str, str]:
    """``"name name:bool ..."`` -> {name: "value" | "bool"}."""
    entries = (word.partition(":") for word in text.split())
    return {name: kind or "value" for name, _, kind in entries}


class Flag(NamedTuple):
    name: str           # normalized long name, without dashes
    value: str | None   # None for a boolean flag given without "=value"
    spelled: str        # as written, for messages


def split(argv: list[str], known: dict[str, str], shorthands: dict[str, str], program: str) -> list[Flag]:
    """argv -> flags in order, with values attached; ValueError for anything pflag rejects."""
    flags: list[Flag] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            if args:
                raise ValueError(_positional(args[0], flags, known, program))
            break
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            name = name.replace("_", "-")
            if not name or name.startswith("-") or name not in known:
                raise ValueError(f"unknown flag: --{arg[2:].partition('=')[0]}")
            flags.append(_take(name, value if eq else None, f"--{name}", args, known))
        elif arg.startswith("-") and arg != "-":
            letter, rest = arg[1], arg[2:]
            if letter not in shorthands:
                raise ValueError(f"unknown shorthand flag: {letter!r} in {arg}")
            name = shorthands[letter]
            if known[name] == "bool":
                flags.append(Flag(name, rest[1:] if rest.startswith("=") else None, f"-{letter}"))
                if rest and not rest.startswith("="):
                    args.insert(0, f"-{rest}")  # -hv3: shorthands run together
            else:
                value = rest[1:] if rest.startswith("=") else rest
                flags.append(_take(name, value if rest else None, f"-{letter}", args, known))
        else:
            raise ValueError(_positional(arg, flags, known, program))
    return flags


def _take(name: str, value: str | None, spelled: str, rest: list[str], known: dict[str, str]) -> Flag:
    """A flag's value: after "=", else (unless boolean) the next argument, whatever it looks like."""
    if value is None and known[name] != "bool":
        if not rest:
            raise ValueError(f"flag needs an argument: {spelled}")
        value = rest.pop(0)
    return Flag(name, value, spelled)


def _positional(arg: str, before: list[Flag], known: dict[str, str], program: str) -> str:
    message = f"unexpected argument {arg!r}: {program} takes only flags"
    if before and known[before[-1].name] == "bool" and before[-1].value is None:
        message += f" (a boolean flag takes its value as {before[-1].spelled}={arg})"
    return message
