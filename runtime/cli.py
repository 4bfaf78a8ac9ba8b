"""``runtime``: stream a Zarr survey through a model bundle (its subcommands land with issue #6; none exist yet)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="runtime", description=__doc__.strip("`"))
    parser.parse_args(argv)
    print("runtime: no subcommands are implemented yet (issue #6); see README.md", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
