"""runtime: stream a Zarr survey through a model bundle."""
