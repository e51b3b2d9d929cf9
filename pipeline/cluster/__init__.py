"""The DAG on a cluster (``python -m pipeline.cluster submit|status|cancel``, :mod:`pipeline.cluster.commands`):
one submitit job per stale stage instance, its processes, its DVC locks, its record, DVC's run-cache through a
remote."""
