"""Test-wide settings: offline, quiet, and never touching the user's Prefect or MLflow state."""
import os
import re

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


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance (2 CPUs, no dashboard) for the whole session; prefect-ray's RayTaskRunner joins
    it instead of starting its own. Ray's node start has a fixed 30 s wait that fails under heavy load, so it
    starts once."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("prefect_ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, namespace="prefect")
    yield ray
    ray.shutdown()


# --------------------------------------------------------------------------- no silent skips in CI
# A test that needs a server, a browser or a database skips where it is missing, with its reason printed
# (addopts has -ra). Under CI=true that skip fails the run instead, naming what is missing: a CI machine
# without chromium or PostgreSQL must not pass green with the UI or production-profile checks unrun.
MISSING_RESOURCE = re.compile(r"chromium|chrome|browser|playwright|postgres|psycopg|server|database", re.I)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if MISSING_RESOURCE.search(reason):
        report.outcome = "failed"
        report.longrepr = (f"CI=true: this test would skip because something it needs is missing: {reason}\n"
                           "Install it (.ci/setup-system.sh installs chromium and postgresql), or run "
                           "without CI=true to skip it.")
