"""Command-line conventions shared by every ``cinn4most`` command (standard library only).

One option name per meaning across commands: ``--out`` for what a command writes, ``--bundle`` for a model
bundle, ``--survey`` for a survey store, ``--catalog`` for a catalogue store. Earlier names (``--output``,
``--model``, ``--input``) are still accepted, hidden from the help, so scripts keep working. Help texts show
defaults.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from ..contracts.streams import check_index

__all__ = ["HelpFormatter", "add_option", "check_indices", "check_required", "describe_error", "run_command",
           "use_help_formatter"]

#: what to do about an operating-system error, by errno (the path and the system's words come first)
_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free space, then re-run the same command (with --resume where it has one)",
    errno.EDQUOT: "the disk quota is exhausted: free space, then re-run (with --resume where it has one)",
    errno.EROFS: "the file system is read-only: choose an output on a writable one",
    errno.EACCES: "permission denied: choose an output folder you can write, or fix its permissions",
    errno.EPERM: "operation not permitted: choose an output folder you can write",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or use fewer workers",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` after every option that has a default worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        hidden = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if hidden or "%(default)" in text or action.required:
            return text
        return text + " (default: %(default)s)"


def add_option(parser: argparse.ArgumentParser, name: str, *old_names: str, required: bool = False,
               **kwargs) -> None:
    """``name`` with its help, plus hidden ``old_names`` for the same value; ``required`` is checked by
    :func:`check_required` (argparse cannot require one of two spellings)."""
    dest = name.lstrip("-").replace("-", "_")
    if required:
        kwargs["help"] = kwargs.get("help", "") + " (required)"
    parser.add_argument(name, dest=dest, **kwargs)
    for old in old_names:
        parser.add_argument(old, dest=dest, help=argparse.SUPPRESS, **{k: v for k, v in kwargs.items()
                                                                        if k != "help"})
    if required:
        required_options = parser.get_default("_required_options") or []
        parser.set_defaults(_required_options=[*required_options, (dest, name)])


def check_required(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``parser.error`` (exit 2) for a required option given under none of its names."""
    for dest, name in getattr(args, "_required_options", None) or []:
        if getattr(args, dest, None) is None:
            parser.error(f"the following arguments are required: {name}")


def use_help_formatter(parser: argparse.ArgumentParser) -> None:
    """:class:`HelpFormatter` for ``parser`` and every sub-command parser under it."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                use_help_formatter(sub)


def describe_error(exc: BaseException) -> str:
    """One line for the user: our own messages as they are; an operating-system error as path, the system's
    words and what to do (a traceback tells an astronomer nothing about a full disk)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        where = exc.filename if exc.filename is not None else ""
        text = f"{where}: {os.strerror(exc.errno)}" if where else os.strerror(exc.errno)
        hint = _OS_HINTS.get(exc.errno)
        message = f"{text} ({hint})" if hint else text
    elif isinstance(exc, KeyError) and exc.args:
        message = str(exc.args[0])
    elif isinstance(exc, MemoryError):
        message = "out of memory" + (f" ({exc})" if str(exc) else "") + ": use smaller chunks or fewer workers"
    else:
        message = str(exc) or type(exc).__name__
    return " ".join(message.split())


#: options that seed random streams or number spectra: non-negative int64 values (``spectra.contracts.streams``)
INDEX_OPTIONS = (("seed", "--seed"), ("first_id", "--first-id"))


def check_indices(args: argparse.Namespace) -> None:
    """Refuse a ``--seed`` or ``--first-id`` outside [0, 2**63) before a command does any work: such a value used to
    fail in the middle of a run, naming no option and leaving an unfinished output."""
    for attr, option in INDEX_OPTIONS:
        value = getattr(args, attr, None)
        if value is not None and not isinstance(value, int):  # an option value, not a number that equals an int
            raise ValueError(f"{option} must be an integer in [0, 2**63), got {value!r}")
        if value is not None:
            check_index(value, option)


def run_command(program: str, parser: argparse.ArgumentParser, argv: list[str] | None = None,
                interrupted: str = "re-run the same command to resume") -> int:
    """The ``main`` of every CLI: parse ``argv`` with ``parser``, check the required options (:func:`check_required`)
    and run the sub-command (``args.func(args)``): bad input and failing files or disks give one line on stderr and
    exit 2, Ctrl-C exit 130 with how to resume (``interrupted``, or the sub-command's own ``interrupted`` default).
    Every CLI's ``main`` is this call, so all commands answer the same failure the same way. Programming errors
    still raise (a traceback is a bug report).
    """
    args = parser.parse_args(argv)
    check_required(parser, args)
    interrupted = getattr(args, "interrupted", interrupted)
    try:
        check_indices(args)
        return args.func(args)
    except (ValueError, LookupError, OSError, MemoryError, RecursionError) as exc:
        print(f"{program} {args.command}: error: {describe_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{program} {args.command}: interrupted; {interrupted}", file=sys.stderr)
        return 130
