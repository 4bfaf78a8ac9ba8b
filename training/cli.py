"""``training``: fit and evaluate the cINN (its subcommands land with issue #4; none exist yet)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="training", description=__doc__.strip("`"))
    parser.parse_args(argv)
    print("training: no subcommands are implemented yet (issue #4); see README.md", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
