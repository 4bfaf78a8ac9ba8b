"""Build the example surveys that ship in the package (``runtime/examples/*.zarr.zip``), for the quick start.

    python scripts/build_examples.py --synthetic TEST_SURVEY.zarr --rows 60 --spectra ../shared/data/spectra

* ``synthetic.zarr.zip``: the first ``--rows`` rows of a survey of the fixed held-out PySME test set (never seen by
  the default model or its emulator), noisy at several S/N and pseudo-continuum normalised, with their truth;
* ``observed.zarr.zip``: the UVES and HARPS solar spectra and HARPS 38 Vir from ``../shared/data/spectra`` through
  ``spectra ingest`` (with the per-file settings of ``benchmarks/real_stars.py``).
Called by ``scripts/build-default-model.sh``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import zarr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from real_stars import STARS  # noqa: E402

from runtime.packaged import EXAMPLES  # noqa: E402
from spectra.observed.ingest import IngestOptions, ingest  # noqa: E402


def first_rows(survey: Path, rows: int, out: Path) -> Path:
    """A copy of the first ``rows`` rows of every per-row array of ``survey``, attributes kept."""
    src = zarr.open_group(str(survey), mode="r")
    n = src["flux"].shape[0]
    dest = zarr.open_group(str(out), mode="w-")
    for name, arr in src.arrays():
        data = arr[:rows] if arr.shape and arr.shape[0] == n and name != "wavelength" else arr[:]
        chunks = (min(rows, 64), *data.shape[1:]) if name != "wavelength" else data.shape
        dest.create_array(name, data=data, chunks=chunks)
        dest[name].attrs.update(dict(arr.attrs))
    dest.attrs.update({**dict(src.attrs), "example_of": str(survey.resolve()), "example_rows": rows})
    return out


def zip_store(store: Path, archive: Path) -> Path:
    """Zip a Zarr folder (chunks are compressed already: stored as they are)."""
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as z:
        for file in sorted(store.rglob("*")):
            if file.is_file():
                z.write(file, file.relative_to(store).as_posix())
    return archive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--synthetic", required=True, help="survey of held-out spectra (spectra survey)")
    parser.add_argument("--rows", type=int, default=60, help="rows of it to ship")
    parser.add_argument("--spectra", default=str(ROOT.parent / "shared" / "data" / "spectra"))
    args = parser.parse_args()
    EXAMPLES.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp())
    try:
        first_rows(Path(args.synthetic), args.rows, tmp / "synthetic.zarr")
        folder = Path(args.spectra)
        files = [folder / name for _, name, _, _, _ in STARS]
        per_file = {str(folder / name): IngestOptions(**options) for _, name, options, _, _ in STARS}
        ingest(files, tmp / "observed.zarr", IngestOptions(), per_file=per_file, progress=False)
        for name in ("synthetic", "observed"):
            archive = zip_store(tmp / f"{name}.zarr", EXAMPLES / f"{name}.zarr.zip")
            print(f"{archive}: {archive.stat().st_size / 1e6:.1f} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
