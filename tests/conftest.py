"""Test-wide settings: offline, quiet, and never touching the user's Prefect or MLflow state."""
import os

from flows.cli import offline_env_defaults  # noqa: E402 - imports neither prefect nor mlflow

# Before prefect/mlflow are imported by any test module; and never reach a hub.
offline_env_defaults()
for _key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_key, "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server and database for the whole session: each start costs 20-60 s on CI."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=None):  # the env default set above
        yield
