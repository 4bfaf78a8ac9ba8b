"""training: fit and evaluate the cINN."""
