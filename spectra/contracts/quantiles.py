"""The posterior quantile levels and their catalogue column suffixes, defined together and used by name.

Every quantile the software computes (``runtime.posterior``, the bundle's summary graph, ``training evaluate``)
and every ``<p>_p16``-style catalogue column comes from :data:`QUANTILE_LEVELS`. The summary graph bakes the
levels in when it is exported and the manifest records them (``extra_graphs.posterior_summary.quantiles``);
:func:`check_levels` is how the bundle reader refuses a bundle made with other levels, since its ``quantiles``
output would otherwise be read into the wrong columns. Code that needs one level asks for it by name
(:func:`index`), never by position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["QUANTILES", "QUANTILE_LEVELS", "QuantileLevel", "check_levels", "index"]


@dataclass(frozen=True)
class QuantileLevel:
    """One posterior quantile: ``name`` (``p16``; the catalogue column is ``<parameter>_<name>``) and ``level``."""

    name: str
    level: float

    @property
    def suffix(self) -> str:
        """The catalogue column suffix (``_p16``)."""
        return f"_{self.name}"


#: the levels in output order (the summary graph's ``quantiles`` axis, the catalogue's column order)
QUANTILE_LEVELS: tuple[QuantileLevel, ...] = (
    QuantileLevel("p2_5", 0.025),
    QuantileLevel("p16", 0.16),
    QuantileLevel("p50", 0.5),
    QuantileLevel("p84", 0.84),
    QuantileLevel("p97_5", 0.975),
)
#: the levels alone, in the same order (what numpy and the summary graph take)
QUANTILES: tuple[float, ...] = tuple(q.level for q in QUANTILE_LEVELS)
_INDEX = {q.name: i for i, q in enumerate(QUANTILE_LEVELS)}


def index(name: str) -> int:
    """Position of the quantile ``name`` (``"p16"``) on a quantile axis ordered as :data:`QUANTILE_LEVELS`."""
    try:
        return _INDEX[name]
    except KeyError:
        raise KeyError(f"unknown quantile {name!r}; known: {', '.join(_INDEX)}") from None


def check_levels(recorded: object, where: str) -> None:
    """Raise ``ValueError`` unless ``recorded`` (levels read from a file) equals :data:`QUANTILES`, in order."""
    ok = (isinstance(recorded, Sequence) and not isinstance(recorded, str) and len(recorded) == len(QUANTILES)
          and all(isinstance(v, int | float) and not isinstance(v, bool) for v in recorded)
          and all(abs(float(v) - q) <= 1e-12 for v, q in zip(recorded, QUANTILES, strict=True)))
    if not ok:
        raise ValueError(f"{where}: quantile levels {recorded!r:.80} differ from this software's "
                         f"{list(QUANTILES)} ({', '.join(q.name for q in QUANTILE_LEVELS)}); its output would be "
                         "read into the wrong catalogue columns: re-export the bundle with this version of `export`")
