"""Observed spectra -> the training's form: readers of FITS and ASCII spectra (``readers``), the resolving power
from headers or a table of instruments (``instruments``), the preparation steps (``prepare``: air wavelengths,
rest frame, resolution matching, rebinning), radial velocities against synthetic templates (``rv``), ``spectra
ingest`` chaining them into a survey (``ingest``) and observed-like example files made from grid rows
(``examples``). This ``__init__`` imports nothing: import the module you need.
"""
