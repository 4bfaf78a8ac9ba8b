"""Stores, the files the stages hand each other: the HDF5 grid store (``gridstore``) and its compact committable
shards (``gridpack``), grids made from grids, normalised or rotated (``derived``), the Zarr survey writer
(``survey``), simulated surveys generated on reading (``simulated``), merging surveys (``merge``) and the survey
reader that ``runtime process``, ``catalog check`` and ``spectra info`` read every survey through
(``survey_reader``). This ``__init__`` imports nothing: import the module you need.
"""
