"""log_adapter_model: the logged MLflow model is registered as 'candidate', loads offline and generates."""
from __future__ import annotations

import mlflow
import pytest
import torch

from schemas.pipeline import PipelineConfig
from schemas.train import AdapterConfig, ModelConfig
from tasks.tokenize.tokenizer import train_sample_tokenizer
from tasks.track.model_registry import CANDIDATE_ALIAS, log_adapter_model
from tasks.train.model import add_adapter, build_tiny_llama, load_base_model

TEXTS = [f"what colour is the sky on day {i}? it is {'blue' if i % 2 else 'grey'}" for i in range(100)]


@pytest.fixture()
def tracking(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # Artifacts under tmp_path too, not in ./mlartifacts of the working directory.
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("registry-test",
                                                                 artifact_location=(tmp_path / "art").as_uri()))
    yield uri
    mlflow.set_tracking_uri(None)


def test_logged_adapter_is_registered_loads_and_generates(tmp_path, tracking):
    base = tmp_path / "base"
    train_sample_tokenizer(TEXTS, base, vocab_size=300)
    build_tiny_llama(base, base, ModelConfig())
    model = add_adapter(load_base_model(ModelConfig(), AdapterConfig(r=4), "cpu", base=str(base)), AdapterConfig(r=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    from tasks.tokenize.tokenizer import load_tokenizer
    load_tokenizer(str(base)).save_pretrained(adapter)
    cfg = PipelineConfig.model_validate({"name": "tiny-test", "ingest": {"sources": [{"name": "x", "path": "x"}]},
                                         "adapter": {"r": 4}})

    with mlflow.start_run() as run:
        uri = log_adapter_model(adapter, str(base), cfg)
    assert run.info.run_id

    version = mlflow.MlflowClient().get_model_version_by_alias("tiny-test", CANDIDATE_ALIAS)
    assert version.run_id == run.info.run_id and version.tags["method"] == "lora"
    loaded = mlflow.pyfunc.load_model(f"models:/tiny-test@{CANDIDATE_ALIAS}")
    out = loaded.predict(["what colour is the sky?"], params={"max_new_tokens": 5})
    assert isinstance(out, list) and len(out) == 1 and isinstance(out[0], str) and out[0]
    assert uri.startswith("models:/")

    # A cached rerun with the same adapter points the alias at the registered version instead of a copy.
    with mlflow.start_run() as rerun:
        again = log_adapter_model(adapter, str(base), cfg)
    client = mlflow.MlflowClient()
    assert again == f"models:/tiny-test/{version.version}"
    assert len(client.search_model_versions("name = 'tiny-test'")) == 1
    assert client.get_run(rerun.info.run_id).data.tags["peftpipe.adapter_reused"] == "true"
