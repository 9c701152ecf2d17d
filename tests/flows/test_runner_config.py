"""The runner section and where it leads: the task runner factory, the deployments' runner parameters."""
import pytest
from prefect.task_runners import ProcessPoolTaskRunner

from flows.deployments import resolve_config
from flows.runners import task_runner
from schemas.pipeline import ConfigError, load_config
from schemas.runner import RunnerConfig
from tasks.core.shards import stage_mapper

SAMPLE = "configs/sample.yaml"


def test_the_factory_builds_each_kind():
    assert task_runner("local", 2) is None  # the flow's default thread pool; the stages run their own pools
    pool = task_runner("processes", 3)
    assert isinstance(pool, ProcessPoolTaskRunner) and pool._max_workers == 3
    pytest.importorskip("prefect_ray")
    from prefect_ray import RayTaskRunner

    local = task_runner("ray", 2)
    assert isinstance(local, RayTaskRunner) and local.init_kwargs["num_cpus"] == 2
    joined = task_runner("ray", 2, "ray://head:10001")
    assert joined.address == "ray://head:10001" and "num_cpus" not in joined.init_kwargs


def test_local_keeps_the_stages_own_loops_and_others_map_through_prefect():
    assert stage_mapper(RunnerConfig(kind="local"), "filter") is None
    assert callable(stage_mapper(RunnerConfig(kind="processes"), "filter"))


def test_the_runner_stays_out_of_every_cache_key():
    a, b = load_config(SAMPLE), load_config(SAMPLE, ["runner.kind=ray", "runner.workers=8"])
    assert a.runner.cache_settings() == b.runner.cache_settings() == {}


def test_ray_address_without_ray_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="runner.kind"):
        load_config(SAMPLE, ["runner.ray_address=ray://head:10001"])
    with pytest.raises(ConfigError, match="runner.kind"):
        load_config(SAMPLE, ["runner.kind=spark"])


def test_deployment_parameters_set_the_runner():
    assert resolve_config(SAMPLE).runner.kind == "local"
    cfg = resolve_config(SAMPLE, ["dedup.threshold=0.7"], runner="ray", ray_address="ray://head:10001")
    assert (cfg.runner.kind, cfg.runner.ray_address, cfg.dedup.threshold) == ("ray", "ray://head:10001", 0.7)
    given = load_config(SAMPLE, ["runner.kind=processes", "runner.workers=4"])
    assert resolve_config(cfg=given) is given
    assert resolve_config(cfg=given, runner="ray").runner.model_dump() == \
        {"kind": "ray", "ray_address": None, "workers": 4}
    with pytest.raises(ConfigError, match="runner"):
        resolve_config(SAMPLE, runner="spark")
