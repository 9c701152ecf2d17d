"""Config of MLflow tracking."""
from __future__ import annotations

from pydantic import Field

from schemas.base import StrictModel, UrlWithSecret


class TrackingConfig(StrictModel):
    tracking_uri: UrlWithSecret = Field("sqlite:///mlruns.db", description=(
        "MLflow tracking URI. A password in it (http://user:password@host) is masked wherever the config is "
        "shown as JSON: Prefect's flow parameters and UI, MLflow params."))
    experiment: str = Field("peftpipe", description="MLflow experiment name.")
    run_name: str | None = Field(None, description="MLflow run name; defaults to the config name and a time stamp.")
    register_as: str | None = Field(None, description="Registered model name; defaults to the config name.")
    lost_after_s: float = Field(60, gt=0, description=(
        "When an http(s) tracking server stops answering mid-run, the run fails (exit 5) within about this "
        "many seconds; it sets MLflow's request retries and timeout (MLFLOW_HTTP_REQUEST_* in the "
        "environment win)."))
