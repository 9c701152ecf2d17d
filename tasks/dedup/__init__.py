"""Stages ``exact_dedup`` and ``near_dedup``, and the standalone ``peftpipe dedup`` flow's steps.

- ``text``: which text of a record is compared, its normalization and shingle hashes.
- ``minhash``: MinHash signatures, LSH band keys, candidate verification.
- ``lsh``: the out-of-core search as named steps (sketch, buckets, verify) mapped over units of rows.
- ``cluster``: verified pairs to clusters and keep decisions.
- ``steps``: the steps over a shard directory and the mappers that run them in parallel.
- ``report``: the cluster report (table, histogram, examples).
- ``stage``: the two stage functions and their Prefect tasks.
"""
