"""prefect.yaml and the deployments' entry flows, checked without a server: what `prefect deploy` would create."""
from pathlib import Path

import pytest
import yaml
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema
from prefect.workers.process import ProcessWorker

from flows import deployments
from flows.deployments import DATASET_EVENT, dataset_digest, resolve_config, variable_name
from schemas.pipeline import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in SPEC["deployments"]}


def test_the_deployments_have_entrypoints_in_flows():
    assert set(DEPLOYMENTS) == {"curate", "train", "pipeline", "train-node0", "train-node1"}
    for d in DEPLOYMENTS.values():
        path, func = d["entrypoint"].split(":")
        assert path == "flows/deployments.py" and hasattr(deployments, func)


def test_curate_is_nightly_and_pipeline_is_ad_hoc():
    (schedule,) = DEPLOYMENTS["curate"]["schedules"]
    assert schedule["cron"] == "0 2 * * *" and schedule["active"] is True
    assert not DEPLOYMENTS["pipeline"].get("schedules")
    assert DEPLOYMENTS["curate"]["work_pool"]["name"] == DEPLOYMENTS["pipeline"]["work_pool"]["name"] == "peftpipe-cpu"


def test_train_goes_to_the_gpu_pool_with_valid_job_variables():
    pool = DEPLOYMENTS["train"]["work_pool"]
    assert pool["name"] == "peftpipe-gpu"
    # The pools are process pools: every job variable must be one the process worker's template knows.
    known = ProcessWorker.get_default_base_job_template()["variables"]["properties"]
    assert set(pool["job_variables"]) <= set(known)
    assert pool["job_variables"]["env"]["PYTORCH_CUDA_ALLOC_CONF"]
    # Docker and Kubernetes variants ask for GPUs.
    defs = SPEC["definitions"]["work_pools"]
    assert defs["gpu_docker"]["job_variables"]["container_create_kwargs"]["device_requests"][0]["Driver"] == "nvidia"
    assert defs["gpu_kubernetes"]["job_variables"]["gpu_count"] >= 1


def test_train_trigger_listens_for_the_event_curate_emits():
    (spec,) = DEPLOYMENTS["train"]["triggers"]
    trigger = DeploymentEventTrigger.model_validate(spec)  # Prefect's own validation of the trigger
    assert trigger.expect == {DATASET_EVENT}
    # The resource id announce_dataset emits must match the trigger's pattern.
    pattern = spec["match"]["prefect.resource.id"]
    assert pattern.endswith("*") and "peftpipe.dataset.sample".startswith(pattern[:-1])
    assert spec["parameters"] == {"config": "{{ event.payload.config }}", "overrides": "{{ event.payload.overrides }}"}


def test_default_parameters_name_a_config_that_validates():
    for d in DEPLOYMENTS.values():
        params = d["parameters"]
        assert params["overrides"] == []
        cfg = load_config(ROOT / params["config"])
        assert cfg.ingest.sources


@pytest.mark.parametrize("func", ["curate_deployment", "train_deployment", "pipeline_deployment"])
def test_entry_flow_parameters_render_a_pipeline_config_form(func):
    flow = load_flow_from_entrypoint(str(ROOT / f"flows/deployments.py:{func}"))
    schema = parameter_schema(flow).model_dump()
    props = schema["properties"]
    assert list(props) == ["config", "overrides", "cfg", "runner", "ray_address"]
    assert props["config"]["default"] == "configs/sample.yaml"
    assert {"enum": ["local", "processes", "ray"], "type": "string"} in props["runner"]["anyOf"]
    assert {"$ref": "#/definitions/PipelineConfig"} in props["cfg"]["anyOf"]
    # The form has one field per config section, each with its own typed fields.
    assert {"dedup", "filters", "train", "tracking"} <= set(schema["definitions"]["PipelineConfig"]["properties"])
    assert "threshold" in schema["definitions"]["DedupConfig"]["properties"]


def test_resolve_config_applies_env_then_parameter_overrides(monkeypatch):
    config = str(ROOT / "configs/sample.yaml")
    monkeypatch.setenv("PEFTPIPE_SET", "tracking.tracking_uri=http://mlflow:5000 dedup.threshold=0.6")
    cfg = resolve_config(config, ["dedup.threshold=0.7"])
    assert cfg.tracking.tracking_uri == "http://mlflow:5000"
    assert cfg.dedup.threshold == 0.7  # the run's own override wins over the pool's
    given = load_config(config, ["name=given"])
    assert resolve_config(config, ["name=ignored"], given) is given
    with pytest.raises(ConfigError, match="unknown key"):
        resolve_config(config, ["dedup.no_such_key=1"])


def test_dataset_digest_is_order_free_and_content_sensitive():
    a = dataset_digest({"train": "t1", "eval": "e1"})
    assert a == dataset_digest({"eval": "e1", "train": "t1"})
    assert a != dataset_digest({"train": "t2", "eval": "e1"})
    assert variable_name("My Config.v2") == "peftpipe-dataset-my-config-v2"


def test_the_deployments_take_the_training_objective():
    """DPO / KTO through the same three parameters: a config file, an override, or the form's train.objective."""
    flow = load_flow_from_entrypoint(str(ROOT / "flows/deployments.py:train_deployment"))
    defs = parameter_schema(flow).model_dump()["definitions"]
    objective = defs["TrainConfig"]["properties"]["objective"]
    assert objective.get("enum") == ["sft", "dpo", "kto"] and objective["default"] == "sft"
    assert {"min_margin", "min_agreement", "max_pairs_per_prompt", "group_key"} <= set(
        defs["PreferenceConfig"]["properties"])
    assert resolve_config(str(ROOT / "configs/dpo-sample.yaml")).train.objective == "dpo"
    cfg = resolve_config(str(ROOT / "configs/sample.yaml"), ["train.objective=kto", "preference.min_agreement=0.8"])
    assert (cfg.train.objective, cfg.preference.min_agreement) == ("kto", 0.8)


def test_the_two_node_deployments_give_each_node_its_rank_and_the_shared_rendezvous(monkeypatch):
    from tasks.train.launch import torchrun_command

    known = ProcessWorker.get_default_base_job_template()["variables"]["properties"]
    for rank in (0, 1):
        pool = DEPLOYMENTS[f"train-node{rank}"]["work_pool"]
        assert pool["name"] == "peftpipe-gpu" and pool["work_queue_name"] == f"node{rank}"
        assert set(pool["job_variables"]) <= set(known)
        env = pool["job_variables"]["env"]
        # `prefect deploy` fills {{ $VAR }} from its environment; the worker's run gets the result as env.
        filled = env["PEFTPIPE_SET"].replace("{{ $PEFTPIPE_RDZV_ENDPOINT }}", "gpu-a.internal:29400")
        monkeypatch.setenv("PEFTPIPE_SET", filled)
        cfg = resolve_config(str(ROOT / "configs/sample.yaml"))
        assert (cfg.train.nnodes, cfg.train.node_rank) == (2, rank)
        cmd = torchrun_command(cfg, 8, Path("spec.json"), rdzv_id="job")
        assert f"--node-rank={rank}" in cmd and "--rdzv-endpoint=gpu-a.internal:29400" in cmd
