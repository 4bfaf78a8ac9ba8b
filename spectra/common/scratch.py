"""Temporary outputs the toolkit owns: unique names, removed only by the writer that made them.

A writer builds its output under :func:`scratch_name` (a hidden sibling carrying the process id and a random
token, so two writers, or a stale leftover, never share one) and renames it into place when complete
(:func:`written_atomically`). A crash leaves at worst a ``.NAME.*.cinn4most-partial`` file of ours beside the
output, never a half-written file under the final name, and no writer ever deletes or reuses a name it did not
just make: a user's ``X.partial`` is untouched.

Standard library only (``spectra``, ``runtime`` and ``catalog`` use it).
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["SCRATCH_SUFFIX", "scratch_name", "written_atomically"]

SCRATCH_SUFFIX = ".cinn4most-partial"


def scratch_name(out: str | Path, role: str = "new") -> Path:
    """A fresh sibling name for building ``out``: ``.NAME.<role>-<pid>-<random>.cinn4most-partial``."""
    out = Path(out)
    return out.with_name(f".{out.name}.{role}-{os.getpid()}-{secrets.token_hex(6)}{SCRATCH_SUFFIX}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def written_atomically(out: str | Path, folder: bool = False) -> Iterator[Path]:
    """Yield a scratch path to build ``out`` in (a created empty folder with ``folder``); on success it replaces
    ``out``, on any exception it is removed and ``out`` is left as it was.

    An existing ``out`` (the caller has claimed it, e.g. ``--overwrite`` on an output of ours) is moved aside
    only once the new one is complete, and deleted after the new one is in place: an interrupted overwrite
    keeps the old output.
    """
    out = Path(out)
    tmp = scratch_name(out)
    if folder:
        tmp.mkdir()
    try:
        yield tmp
    except OSError as exc:
        _remove(tmp)
        if exc.filename is None and exc.errno is not None:  # some writers (pyarrow) do not say which file failed
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(out)) from exc
        raise
    except BaseException:
        _remove(tmp)
        raise
    if folder and out.exists():  # a folder cannot be renamed onto a non-empty one: move the old one aside first
        old = scratch_name(out, "old")
        os.replace(out, old)
        os.replace(tmp, out)
        _remove(old)
    else:
        os.replace(tmp, out)
