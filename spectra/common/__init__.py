"""Generic helpers every command uses, right above ``spectra.contracts``: output claims and locks (``outputs``),
atomic scratch files (``scratch``), the one CLI wrapper and the shared argument checks (``cliargs``) and file hashes
(``hashing``). Standard library only (plus the contracts); nothing here knows about spectra, models or catalogues,
and nothing here imports the rest of ``spectra``. This ``__init__`` imports nothing: import the module you need.
"""
