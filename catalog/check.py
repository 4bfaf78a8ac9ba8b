"""``catalog check``: is a catalogue complete and self-consistent?

Checks: the schema (every listed column present, one value per row, expected dtypes), every chunk
marked done, no row left at its fill value (source_id = -1) — i.e. no silent gaps —, unique source
ids, every NaN estimate explained by a flag, flag_bad/flag_warn consistent with the bits, and, given
the survey, the row count and source ids equal the input's, in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .schema import BAD
from .writers import CatalogueStore

__all__ = ["CheckResult", "check_catalogue"]


@dataclass
class CheckResult:
    path: Path
    n_rows: int
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_catalogue(path: str | Path, survey: str | Path | None = None) -> CheckResult:
    store = CatalogueStore.open(path)
    result = CheckResult(Path(path), store.n_rows)
    problems = result.problems
    for name in store.columns:
        if name not in store.root:
            problems.append(f"column {name} is listed but missing")
        elif store.root[name].shape != (store.n_rows,):
            problems.append(f"column {name} has shape {store.root[name].shape}, expected ({store.n_rows},)")
    if problems:
        return result
    done = store.done()
    if not done.all():
        missing = np.flatnonzero(~done)
        problems.append(f"{missing.size} of {done.size} chunks not done (first: {missing[:5].tolist()}); "
                        "complete the run with `runtime process ... --resume`")
    ids = store.column("source_id")
    gaps = np.flatnonzero(ids == -1)
    if gaps.size:
        problems.append(f"{gaps.size} rows were never written (first rows: {gaps[:5].tolist()})")
    if np.unique(ids[ids != -1]).size != np.count_nonzero(ids != -1):
        problems.append("source_id values are not unique")
    flags = store.column("flags")
    params = [c for c in store.columns if c in ("teff", "logg", "fe_h")] or store.columns[2:3]
    nan_rows = np.zeros(store.n_rows, dtype=bool)
    for name in params:
        nan_rows |= ~np.isfinite(store.column(name))
    unexplained = nan_rows & ((flags & int(BAD)) == 0) & (ids != -1)
    if unexplained.any():
        problems.append(f"{unexplained.sum()} rows have NaN estimates without a bad-input or rejection flag")
    if not np.array_equal(store.column("flag_bad"), (flags & int(BAD)) != 0) or \
            not np.array_equal(store.column("flag_warn"), flags != 0):
        problems.append("flag_bad / flag_warn disagree with the flags bitmask")
    if survey is not None:
        import zarr

        survey_ids = zarr.open_group(str(survey), mode="r")["source_id"][:]
        if survey_ids.size != store.n_rows:
            problems.append(f"{store.n_rows} rows but the survey {survey} has {survey_ids.size} spectra")
        elif not np.array_equal(survey_ids, ids):
            first = int(np.flatnonzero(survey_ids != ids)[0])
            problems.append(f"source ids differ from the survey's (first at row {first})")
    attrs = store.attrs
    result.counts = {"rows": store.n_rows, "flag_bad": int(store.column("flag_bad").sum()),
                     "flag_warn": int(store.column("flag_warn").sum())}
    result.counts.update({name: int(np.count_nonzero(flags & bit)) for name, bit in attrs["flag_bits"].items()})
    return result
