"""catalog: catalogue export, check and report."""
