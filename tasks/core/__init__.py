"""Stage plumbing every stage shares, and run safety.

- ``stage``: content-addressed stage directories of Parquet shards, the ledger (``stats.json``), atomic publish
  and the completion marker, ``run_stage``.
- ``recovery``: preflight checks, stale MLflow runs of killed attempts, secret scrubbing, disk-full detection.
- ``pause``: the test-only pause point each stage calls after writing some of its data (a no-op unless
  ``PEFTPIPE_TEST_PAUSE`` names it), so the fault suite kills inside a stage on any machine.

Imports nothing from the other ``tasks`` packages: they all build on it.
"""
