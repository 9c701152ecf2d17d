"""Log the trained adapter as an MLflow model that loads and generates, and register it with alias 'candidate'.

A pyfunc model rather than the transformers flavour: it carries only the adapter (plus its tokenizer) and
names its base, so an 8B base is never copied into the artifact store, yet a small local base (the offline
tiny model) travels inside the model so it loads anywhere with no hub. ``predict`` takes prompts (user
messages) and returns greedy completions.
"""
from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow
import mlflow.pyfunc

from schemas.pipeline import PipelineConfig
from tasks.core.pause import pause_point

CANDIDATE_ALIAS = "candidate"
BEST_ALIAS = "best"  # a sweep's best variant (tasks.sweep.compare ranks them)
BUNDLE_BASE_MAX_BYTES = 256 * 2**20  # bases up to this size travel inside the model
_REQUIREMENTS = ("torch", "transformers", "peft", "safetensors", "tokenizers", "mlflow")


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _requirements() -> list[str]:
    reqs = []
    for name in _REQUIREMENTS:
        try:
            reqs.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(name)
    return reqs


class AdapterGenerator(mlflow.pyfunc.PythonModel):
    """Base model + LoRA adapter; prompts in, greedy completions out."""

    def load_context(self, context) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        conf = context.model_config
        base = context.artifacts.get("base") or conf["base"]
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(context.artifacts["adapter"])
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, revision=conf.get("revision"),
                                                     trust_remote_code=bool(conf.get("trust_remote_code")))
        self.model = PeftModel.from_pretrained(model, context.artifacts["adapter"]).to(self.device).eval()
        self.max_new_tokens = int(conf.get("max_new_tokens", 64))

    def _encode(self, prompt: str) -> list[int]:
        if self.tokenizer.chat_template:
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                     add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        return self.tokenizer(prompt)["input_ids"]

    def predict(self, context, model_input: list[str], params: dict | None = None) -> list[str]:
        import torch

        max_new = int((params or {}).get("max_new_tokens", self.max_new_tokens))
        outputs = []
        for prompt in model_input:
            ids = torch.tensor([self._encode(str(prompt))], device=self.device)
            with torch.no_grad():
                out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                          max_new_tokens=max_new, pad_token_id=self.tokenizer.pad_token_id)
            outputs.append(self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
        return outputs


def _registered_version(name: str, adapter_key: str):
    """The registered version of ``name`` that holds this adapter, if any."""
    try:
        found = mlflow.MlflowClient().search_model_versions(f"name = '{name}' and tags.adapter_key = '{adapter_key}'")
    except mlflow.exceptions.MlflowException:  # a registry without tag search: log a new version
        return None
    return max(found, key=lambda v: int(v.version)) if found else None


def log_adapter_model(adapter_dir: Path, base: str, cfg: PipelineConfig, register: bool = True) -> str:
    """Log the adapter as a pyfunc model into the active MLflow run, register it under
    ``cfg.tracking.register_as`` (or ``cfg.name``) and point the alias 'candidate' at the new version.
    Returns the logged model's URI. ``register=False`` only logs it (a sweep registers its best variant)."""
    active = mlflow.active_run()
    pause_point("log-model", run_id=active.info.run_id if active else "")  # test only: after the artifacts
    adapter_dir = Path(adapter_dir)
    name = cfg.tracking.register_as or cfg.name
    adapter_key = adapter_dir.parent.name  # the content-addressed training output this adapter came from
    if register and (existing := _registered_version(name, adapter_key)) is not None:
        # A cached rerun: the same adapter is already registered; point the alias and this run at it instead
        # of logging and registering a copy (the slowest part of a rerun).
        mlflow.MlflowClient().set_registered_model_alias(name, CANDIDATE_ALIAS, existing.version)
        mlflow.set_tags({"peftpipe.model_version": f"{name}/{existing.version}", "peftpipe.adapter_reused": "true"})
        return f"models:/{name}/{existing.version}"
    artifacts = {"adapter": str(adapter_dir)}
    base_path = Path(base)
    if base_path.is_dir() and _dir_bytes(base_path) <= BUNDLE_BASE_MAX_BYTES:
        artifacts["base"] = str(base_path)
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    model_config = {"base": base, "revision": cfg.model.revision, "trust_remote_code": cfg.model.trust_remote_code,
                    "max_new_tokens": 64, "method": cfg.adapter.method, "r": adapter_config.get("r")}
    info = mlflow.pyfunc.log_model(
        name="adapter", python_model=AdapterGenerator(), artifacts=artifacts, model_config=model_config,
        registered_model_name=name if register else None, pip_requirements=_requirements(),
        # MLflow runs predict on the example, so a model that cannot generate fails here; for a big base
        # that would mean loading it once more just for the check, so only small bundled bases get one.
        input_example=["Hello"] if "base" in artifacts else None,
    )
    if not register:
        mlflow.set_tags({"peftpipe.model_id": info.model_id})
        return info.model_uri
    client = mlflow.MlflowClient()
    version_ = str(info.registered_model_version)
    client.set_registered_model_alias(name, CANDIDATE_ALIAS, version_)
    mlflow.set_tags({"peftpipe.model_version": f"{name}/{version_}"})
    for key, value in {"base": base, "method": cfg.adapter.method, "adapter_key": adapter_key}.items():
        client.set_model_version_tag(name, version_, key, value)
    return info.model_uri


def model_id_of(model_uri: str) -> str | None:
    """The LoggedModel id behind ``models:/<model_id>`` or ``models:/<name>/<version>`` (None otherwise)."""
    if not model_uri or not model_uri.startswith("models:/"):
        return None
    parts = model_uri[len("models:/"):].split("/")
    if len(parts) == 1:
        return parts[0]
    return mlflow.MlflowClient().get_model_version(parts[0], parts[1]).model_id


def register_with_alias(model_uri: str, name: str, alias: str, tags: dict[str, str] | None = None) -> str:
    """Register ``model_uri`` as a new version of ``name`` and point ``alias`` at it; returns the version."""
    version_ = mlflow.register_model(model_uri, name, tags=tags or None).version
    mlflow.MlflowClient().set_registered_model_alias(name, alias, str(version_))
    return str(version_)
