"""Datasets: the readers of every source and their checks (``prepare`` writes what they read), the prepared
files and the loaders that feed training (the batched and the per-sample path), and the stand-ins a rehearsal uses."""
