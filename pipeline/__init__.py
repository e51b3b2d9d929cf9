"""The DVC stages of the reproduction harness: one module per stage (module name = stage name) plus the
shared helpers ``params`` (typed params loading) and ``io`` (atomic outputs, provenance records)."""
