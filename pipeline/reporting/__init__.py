"""The report's pieces: its checked inputs, the statistics, the verdicts on the published claims, the tables,
the figures and the HTML template. Torch-free, so CI rebuilds the report in seconds."""
