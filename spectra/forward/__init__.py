"""The forward model, 4MOST-ification: a synthetic spectrum at the working resolution -> what 4MOST would record,
i.e. Gaussian and rotational broadening, the line-spread function, rebinning onto the HR pixels and noise per Å
(``degrade``), rotation of whole batches as an augmentation (``rotation``) and the pseudo-continuum normaliser
applied alike to synthetic and observed spectra (``continuum``). This ``__init__`` imports nothing: import the
module you need.
"""
