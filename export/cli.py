"""``export``: export a trained model to an ONNX bundle (its subcommands land with issue #5; none exist yet)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="export", description=__doc__.strip("`"))
    parser.parse_args(argv)
    print("export: no subcommands are implemented yet (issue #5); see README.md", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
