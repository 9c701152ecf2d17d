"""Stage plumbing every stage shares, and run safety.

- ``stage``: content-addressed stage directories of Parquet shards, the ledger (``stats.json``), atomic publish
  and the completion marker, ``run_stage``.
- ``recovery``: preflight checks, stale MLflow runs of killed attempts, secret scrubbing, disk-full detection.

Imports nothing from the other ``tasks`` packages: they all build on it.
"""
