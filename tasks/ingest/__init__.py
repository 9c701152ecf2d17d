"""Stage ``ingest``: every configured source into the one record shape (``schemas.record``), as Parquet shards.

- ``readers``: each kind of source (files, globs, directories, fsspec URLs, ``hf:``, ``disk:``) as a stream of rows.
- ``presets``: record layouts (messages, alpaca, sharegpt, ...): how one source row becomes a record.
- ``convert``: rows to records, shared by the in-process path and the parallel workers.
- ``parallel``: big JSON-lines files split at line starts and converted in worker processes.
- ``stage``: the stage function and its Prefect task.
"""
