"""catalog: catalogue schema, Zarr store, Parquet/FITS export, checks and reports (no torch)."""
