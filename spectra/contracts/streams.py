"""Independent per-spectrum random streams: one ``numpy`` generator per (seed, source_id, use).

Every per-spectrum random draw of the toolkit is keyed by (seed, source_id), so results do not depend on
chunking, workers or device. Up to scheme version 1 every use drew from the *same* generator,
``default_rng(SeedSequence([seed, source_id]))``; with the default seed 0 on both sides, the posterior's latent
draws of a simulated survey row were that row's own noise draws shifted by one element (fixed S/N): the
posterior samples of a simulated spectrum were not independent of its noise realisation, so anything measured
on simulated surveys (coverage, calibration, biases) was measured on correlated draws.

Version 2 adds a constant stream tag: ``default_rng(SeedSequence([seed, source_id, tag]))``, one tag per use
(:data:`NOISE`, :data:`LATENT`, :data:`ROW`). The tags are the ASCII codes of four letters: distinctive 32-bit
words, never 0 (``SeedSequence`` pads its entropy with zeros, so a tag 0 would reproduce the untagged version-1
stream) and never a small integer that other integer-list seeds of the project (``[seed, c]``, ``[seed, k, i]``)
could put in the same place. ``seed`` is limited to one 32-bit word so that the words of ``source_id`` (one or two)
can never be mistaken for those of the seed.

This module imports only numpy and is a contract (``spectra.contracts``, the bottom of the import graph): the
survey writers of ``spectra`` (noise) and the sampler of ``runtime`` (latent draws) import this one definition, so
both sides cannot drift apart. The scheme is recorded in model bundle
manifests, surveys, simulated-survey descriptions and catalogues (:func:`scheme`), and ``runtime process
--resume`` refuses to continue a catalogue made with another one.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LATENT", "LEGACY_SCHEME", "NOISE", "ROW", "SCHEME_VERSION", "STREAMS", "check_index", "check_seed",
           "scheme", "stream_rng"]

#: the Gaussian noise added to a noiseless spectrum (``spectra survey``, simulated surveys, example L1 files)
NOISE = 0x4E4F4953  # "NOIS"
#: the posterior's latent draws z ~ N(0, I) (``runtime.sampler.latent_draws``)
LATENT = 0x4C41544E  # "LATN"
#: a survey row's other draws: which base spectrum a simulated row shows, a log-uniform S/N
ROW = 0x524F5753  # "ROWS"
#: stream name -> tag (what :func:`scheme` records)
STREAMS = {"noise": NOISE, "latent": LATENT, "row": ROW}
#: 1: SeedSequence([seed, source_id]) shared by every use; 2: one tagged stream per use (this module)
SCHEME_VERSION = 2
_DESCRIPTION = ("numpy default_rng(SeedSequence([seed, source_id, tag])); tags: "
                + ", ".join(f"{name}={tag:#x}" for name, tag in STREAMS.items()))
#: what a catalogue or bundle that predates the record was made with (``scheme()`` of version 1)
LEGACY_SCHEME = {"version": 1, "scheme": "numpy default_rng(SeedSequence([seed, source_id])), one stream for "
                                        "noise and latent draws"}


def scheme() -> dict:
    """``{"version": 2, "scheme": "...; tags: noise=0x..., ..."}``: the record written into bundle manifests and
    catalogue attributes (a plain JSON object, compared whole on ``--resume``)."""
    return {"version": SCHEME_VERSION, "scheme": _DESCRIPTION}


def check_seed(seed: int, what: str = "seed") -> int:
    """``seed`` as an int, refused unless 0 <= seed < 2**32 (one ``SeedSequence`` word: see the module docstring).

    Commands call it before any work, so a bad ``--seed`` is one clear error, not a failure in a worker."""
    if isinstance(seed, bool) or int(seed) != seed or not 0 <= int(seed) < 2**32:
        raise ValueError(f"{what} must be an integer in [0, 2**32), got {seed!r}")
    return int(seed)


def check_index(value: int, what: str) -> int:
    """``value`` as an int, refused unless 0 <= value < 2**63 (a non-negative int64: a source id, a ``--first-id``,
    any ``--seed``), in one line naming ``what``.

    Commands call it on their options before any work: a negative value used to pass the door and fail later in
    ``SeedSequence`` ("expected non-negative integer"), naming neither the option nor the array."""
    if isinstance(value, bool) or int(value) != value or not 0 <= int(value) < 2**63:
        raise ValueError(f"{what} must be an integer in [0, 2**63), got {value!r}")
    return int(value)


def stream_rng(seed: int, source_id: int, stream: int) -> np.random.Generator:
    """The generator of one use (``stream``: :data:`NOISE`, :data:`LATENT` or :data:`ROW`) for one spectrum.

    Depends on (seed, source_id, stream) only, so a spectrum's draws are the same in any reader, chunk, worker or
    device, and two uses never share draws. ``seed``: 0 <= seed < 2**32; ``source_id``: a non-negative integer.
    """
    seed, source_id, stream = check_seed(seed), int(source_id), int(stream)
    if source_id < 0:
        raise ValueError(f"source_id must be non-negative to seed its random streams, got {source_id}")
    if stream not in STREAMS.values():
        raise ValueError(f"unknown random stream tag {stream:#x}; known: {STREAMS}")
    return np.random.default_rng(np.random.SeedSequence([seed, source_id, stream]))
