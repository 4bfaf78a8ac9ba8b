"""The contracts between the packages, each defined once, at the bottom of the import graph.

One module per contract; every other module imports its names from here, and nothing here imports anything of
the repository (only the standard library and numpy), so that any layer may depend on a contract without
pulling in another layer:

* :mod:`.parameters`: the physical transform between a parameter and the network's value (log10 / identity);
* :mod:`.quantiles`: the posterior quantile levels and their catalogue column suffixes, by name;
* :mod:`.density`: the posterior log-density formula;
* :mod:`.flags`: the catalogue's ``flags`` bits and ``spectra ingest``'s ``ingest_flags`` bits, with thresholds;
* :mod:`.conventions`: the continuum conventions, the v_broad prior and the software version;
* :mod:`.manifest`: the model bundle's file names and format version;
* :mod:`.survey`: what a survey reader hands the runtime, and the size limits writers and readers share.
* :mod:`.streams`: seed and source id -> independent per-spectrum random streams (noise, latent draws, rows).
* :mod:`.masks`: the wavelength bands the forward model cannot make (telluric O₂, the Hα core) and the network's
  input mask built from them, recorded in bundle manifests.

This ``__init__`` imports nothing (``import spectra.contracts`` costs nothing); import the module you need.
"""
