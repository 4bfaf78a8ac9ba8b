"""Where commands write: never delete or overwrite what this toolkit did not make, unless told to.

Every command that writes a store or file calls :func:`claim_output` first. An output path that does not
exist is created by the command; an existing one is touched only

* with ``resume`` (the command then reopens it and checks its identity itself), or
* with ``overwrite``, and then only if it is a store this toolkit made (its ``zarr.json`` carries one of our
  ``format`` strings) or a plain file of the expected suffix: a folder of someone's FITS files is never
  removed, whatever the options.

Light on purpose (standard library only): ``spectra``, ``runtime`` and ``catalog`` use it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

__all__ = ["OutputExistsError", "claim_output", "is_our_store"]


class OutputExistsError(FileExistsError):
    """The output exists and the command was not told (or is not allowed) to replace it."""


def is_our_store(path: Path, formats: tuple[str, ...]) -> bool:
    """True if ``path`` is a Zarr group whose ``format`` attribute is one of ``formats``."""
    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False
    return attrs.get("format") in formats


def claim_output(path: str | Path, what: str, formats: tuple[str, ...] = (), overwrite: bool = False,
                 resume: bool = False) -> Path:
    """Check that the command may write ``path``; with ``overwrite`` remove a previous output of ours.

    Arguments:
        path: the output (a Zarr store folder when ``formats`` is given, else a file).
        what: the kind of output, for messages ("survey", "catalogue", "Parquet file").
        formats: the store ``format`` strings that mark a store as ours; empty for plain files.
        overwrite: replace an existing output of ours.
        resume: an existing output will be reopened by the caller (no check here beyond existence).

    Returns the path. Raises :class:`OutputExistsError` when the path exists and may not be replaced, and
    ``FileNotFoundError`` when its parent folder does not exist.
    """
    path = Path(path)
    if not path.parent.exists():
        raise FileNotFoundError(f"cannot write {what} {path}: folder {path.parent} does not exist")
    if not path.exists() and not path.is_symlink():
        return path
    if resume:
        return path
    if not overwrite:
        hint = "add --resume to complete it, --overwrite to replace it," if formats and is_our_store(
            path, formats) else "add --overwrite to replace it"
        raise OutputExistsError(f"{path} exists: {hint} or choose another output")
    if formats:
        if not path.is_dir() or not is_our_store(path, formats):
            raise OutputExistsError(f"{path} exists and is not a {what} made by this toolkit; refusing to delete "
                                    "it even with --overwrite (choose another output)")
        shutil.rmtree(path)
    else:
        if path.is_dir():
            raise OutputExistsError(f"{path} is a folder; --overwrite replaces files only (choose another output)")
        path.unlink()
    return path
