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

from spectra.contracts.flags import BAD, Flag

from .writers import CatalogueStore

__all__ = ["CheckResult", "check_catalogue"]


@dataclass
class CheckResult:
    path: Path
    n_rows: int
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # not problems: e.g. rows of unreadable survey chunks

    @property
    def ok(self) -> bool:
        return not self.problems


def check_catalogue(path: str | Path, survey: str | Path | None = None) -> CheckResult:
    store = CatalogueStore.open(path)
    result = CheckResult(Path(path), store.n_rows)
    problems = result.problems
    for array, names in store.arrays().items():
        expected = (store.n_rows,) if array.startswith("text_") else (store.n_rows, len(names))
        if array not in store.root:
            problems.append(f"array {array} (columns {', '.join(names)}) is listed but missing")
        elif store.root[array].shape != expected:
            problems.append(f"array {array} has shape {store.root[array].shape}, expected {expected}")
    if problems:
        return result
    done = store.done()
    if not done.all():
        missing = np.flatnonzero(~done)
        problems.append(f"{missing.size} of {done.size} chunks not done (first: {missing[:5].tolist()}); "
                        "complete the run with `runtime process ... --resume`")
    params = [c for c in store.columns if c in ("teff", "logg", "fe_h")] or store.columns[2:3]
    cols = store.read_columns(["source_id", "flags", "flag_bad", "flag_warn", *params])
    ids = cols["source_id"]
    flags = cols["flags"]
    gaps = np.flatnonzero((ids == -1) & ((flags & int(Flag.READ_FAILED)) == 0))
    if gaps.size:
        problems.append(f"{gaps.size} rows were never written (first rows: {gaps[:5].tolist()})")
    if np.unique(ids[ids != -1]).size != np.count_nonzero(ids != -1):
        problems.append("source_id values are not unique")
    nan_rows = np.zeros(store.n_rows, dtype=bool)
    for name in params:
        nan_rows |= ~np.isfinite(cols[name])
    unexplained = nan_rows & ((flags & int(BAD)) == 0) & (ids != -1)
    if unexplained.any():
        problems.append(f"{unexplained.sum()} rows have NaN estimates without a bad-input or rejection flag")
    if not np.array_equal(cols["flag_bad"], (flags & int(BAD)) != 0) or \
            not np.array_equal(cols["flag_warn"], flags != 0):
        problems.append("flag_bad / flag_warn disagree with the flags bitmask")
    read_failed = (flags & int(Flag.READ_FAILED)) != 0
    if read_failed.any():
        notes = store.attrs.get("read_failures", [])
        problems_noted = f"; {len(notes)} unreadable survey chunk(s), e.g. {notes[0]}" if notes else ""
        result.notes.append(f"{int(read_failed.sum())} rows flagged READ_FAILED{problems_noted}")
    if survey is not None:
        from spectra.stores.survey_reader import open_survey

        survey_ids, _ = open_survey(survey).source_ids()
        if survey_ids.size == ids.size:  # ids the survey itself cannot give (damaged chunks) are not compared
            ids = np.where(survey_ids == -1, -1, ids)
        if survey_ids.size != store.n_rows:
            problems.append(f"{store.n_rows} rows but the survey {survey} has {survey_ids.size} spectra")
        elif not np.array_equal(survey_ids, ids):
            first = int(np.flatnonzero(survey_ids != ids)[0])
            problems.append(f"source ids differ from the survey's (first at row {first})")
    attrs = store.attrs
    result.counts = {"rows": store.n_rows, "flag_bad": int(cols["flag_bad"].sum()),
                     "flag_warn": int(cols["flag_warn"].sum())}
    result.counts.update({name: int(np.count_nonzero(flags & bit)) for name, bit in attrs["flag_bits"].items()})
    return result
