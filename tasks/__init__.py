"""The work of each stage: one package per stage, plain typed functions with thin Prefect ``@task`` wrappers.

Layers, lowest first; a package imports only from its own layer or below, never upwards:

1. ``core``: stage I/O, ledger, content keys, atomic publish, preflight, secrets.
2. ``track``: publishing to MLflow and to Prefect's UI.
3. ``ingest``, ``dedup``, ``filters``, ``split``, ``tokenize``: the curation stages, in pipeline order.
4. ``train``: the LoRA/QLoRA recipe; ``evaluate``: the adapter against its base.
5. ``sweep``: variants and their comparison.

``tests/test_layout.py`` checks the import graph.
"""
