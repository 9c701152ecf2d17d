"""Prefect tasks: thin @task wrappers over plain, typed functions, one concept per module."""
