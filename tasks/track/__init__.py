"""Publishing: everything that goes to MLflow and to Prefect's UI.

- ``runs``: the MLflow run of a pipeline run: resolved config, ledgers, datasets, metrics.
- ``model_registry``: the adapter logged as an MLflow model and registered with an alias.
- ``artifacts``: Prefect artifacts (markdown, tables, links) that show in the UI.
"""
