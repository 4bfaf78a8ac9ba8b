"""Command-line conventions shared by every ``cinn4most`` command (standard library only).

One option name per meaning across commands: ``--out`` for what a command writes, ``--bundle`` for a model
bundle, ``--survey`` for a survey store, ``--catalog`` for a catalogue store. Earlier names (``--output``,
``--model``, ``--input``) are still accepted, hidden from the help, so scripts keep working. Help texts show
defaults.
"""

from __future__ import annotations

import argparse

__all__ = ["HelpFormatter", "add_option", "check_required", "use_help_formatter"]


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
