"""What ships inside the installed package: the default model bundle and the example surveys.

* ``runtime/default_bundle/``: a trained, verified bundle (pseudo-continuum normalised, like observed spectra after
  ``spectra ingest``; int8 variant; the spectral emulator for the re-simulation check). ``runtime process``
  without ``--bundle`` uses it, and the catalogue records its identity like any bundle's.
* ``runtime/examples/*.zarr.zip``: the quick start's example surveys as zipped Zarr stores: ``synthetic`` (held-out
  PySME spectra never seen in training, with noise at several S/N and their true labels) and ``observed`` (the
  UVES and HARPS solar spectra and HARPS 38 Vir through ``spectra ingest``). ``runtime example-survey`` unpacks
  them as ordinary surveys.

Both are made by ``scripts/build-default-model.sh`` from the PySME spectra kept in ``training/grids``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

__all__ = ["DEFAULT_BUNDLE", "EXAMPLES", "default_bundle", "unpack_examples"]

DEFAULT_BUNDLE = Path(__file__).parent / "default_bundle"
EXAMPLES = Path(__file__).parent / "examples"


def default_bundle() -> Path:
    """The packaged default bundle; a clear error if this installation has none."""
    if not (DEFAULT_BUNDLE / "manifest.json").is_file():
        raise FileNotFoundError(f"no default model bundle in this installation ({DEFAULT_BUNDLE}); give --bundle, "
                                "or build it with scripts/build-default-model.sh")
    return DEFAULT_BUNDLE


def unpack_examples(out: str | Path, overwrite: bool = False) -> list[Path]:
    """Unpack every packaged example survey into ``out`` (a folder); returns the survey paths. Each is unpacked
    under a scratch name and renamed into place, so an interrupted unpack leaves no half survey behind."""
    from spectra.common.outputs import claim_output
    from spectra.common.scratch import written_atomically
    from spectra.stores.survey import SURVEY_FORMAT

    archives = sorted(EXAMPLES.glob("*.zarr.zip"))
    if not archives:
        raise FileNotFoundError(f"no example surveys in this installation ({EXAMPLES})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    surveys = []
    for archive in archives:
        target = out / archive.name.removesuffix(".zip")
        # replaces only a survey of ours; the command has no --resume, so the advice does not offer it
        claim_output(target, "survey", (SURVEY_FORMAT,), overwrite=overwrite, resumable=False)
        with zipfile.ZipFile(archive) as z, written_atomically(target, folder=True) as building:
            z.extractall(building)
        surveys.append(target)
    return surveys
