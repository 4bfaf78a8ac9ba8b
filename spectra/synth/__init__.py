"""Synthesis of training grids: MARCS atmospheres (``atmospheres``), line lists and their survey-wide and
solar-calibrated versions (``linelists``, ``linelist_survey``, ``linecal``), PySME behind one interface
(``synthesis``), the resumable Dask grid builder (``grid``), imported TSFitPy/Turbospectrum grids (``importers``)
and checks of the syntheses (``validation``). Needs PySME (the ``synth`` extra) only where a synthesis runs. This
``__init__`` imports nothing: import the module you need.
"""
