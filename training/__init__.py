"""training: the FrEIA cINN, its data pipeline, training loop and evaluation."""
