"""Pydantic models and Arrow schemas: what the pipeline's data and configs look like. No behaviour."""
