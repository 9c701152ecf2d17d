"""Tokens/s of the ``train`` task inside a Prefect flow, with per-step MLflow logging and the Prefect progress
artifact, against the bare recipe (``train_adapter`` with no logger) on the same rows, model and config.
Tokens/s here is the training loop's whole throughput (``loop_tokens_per_s``: steps, logging and all).

  python bench/train/pipeline_overhead.py OUT_JSON
Env: STEPS (40), HIDDEN (256), SEQ (256), MB (4), ROUNDS (2: bare and flow alternate, to even out the load).
Runs on CPU (Prefect's temporary server, MLflow on SQLite in a temporary folder): what it measures is the
fixed cost per step of the logging, which does not depend on the device; the ratio it prints holds for any
step at least as long as the step measured here.
"""
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import mlflow  # noqa: E402
import torch  # noqa: E402
from prefect import flow  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from schemas.pipeline import PipelineConfig  # noqa: E402
from tasks.core.stage import StageOutput  # noqa: E402
from tasks.tokenize.tokenizer import train_sample_tokenizer  # noqa: E402
from tasks.train.recipe import train_adapter, train_task  # noqa: E402
from tasks.train.synthetic import markov_rows, write_split  # noqa: E402

STEPS, HIDDEN, SEQ, MB, ROUNDS = (int(os.environ.get(k, d)) for k, d in
                                  (("STEPS", 40), ("HIDDEN", 256), ("SEQ", 256), ("MB", 4), ("ROUNDS", 2)))


def config(work: Path, base: str, tracking_uri: str) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "ingest": {"sources": [{"name": "bench", "path": "unused"}]}, "workdir": str(work),
        "model": {"name_or_path": base}, "adapter": {"r": 16, "alpha": 32},
        "tracking": {"tracking_uri": tracking_uri, "experiment": "overhead"},
        "train": {"max_steps": STEPS, "micro_batch_size": MB, "warmup_steps": 2, "eval_every": 10**6,
                  "save_every": 10**6, "device": "cpu", "pad_to_multiple_of": 64, "cpu_threads": 1}})


@flow(name="train-overhead")
def in_flow(tok: Path, base: str, cfg: PipelineConfig, out: Path) -> dict:
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    mlflow.set_experiment(cfg.tracking.experiment)
    with mlflow.start_run() as run:
        result = train_task(StageOutput("tokenize", out.name, tok), base, cfg, run.info.run_id)
    logged = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train_loss")
    return {**result, "logged_steps": len(logged)}


def main() -> None:
    out = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = work / "base"
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(vocab_size=1024, hidden_size=HIDDEN, intermediate_size=3 * HIDDEN,
                                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                     tie_word_embeddings=False)).save_pretrained(base)
        train_sample_tokenizer([f"text {i} for the benchmark tokenizer" for i in range(50)], base, 300)
        write_split(work / "tok" / "train", markov_rows(STEPS * MB, 1000, SEQ, seed=0))
        write_split(work / "tok" / "eval", markov_rows(MB, 1000, SEQ, seed=1))
        cfg = config(work, str(base), f"sqlite:///{work}/mlflow.db")
        runs = []
        for r in range(ROUNDS):
            t0 = time.time()
            bare = train_adapter(work / "tok", str(base), cfg, work / f"bare-{r}")
            t1 = time.time()
            piped = in_flow(work / "tok", str(base), cfg.model_copy(update={"workdir": str(work / f"flow-{r}")}),
                            work / f"flow-{r}")
            t2 = time.time()
            runs.append({"bare_tokens_per_s": round(bare["loop_tokens_per_s"]),
                         "flow_tokens_per_s": round(piped["loop_tokens_per_s"]),
                         "ratio": round(piped["loop_tokens_per_s"] / bare["loop_tokens_per_s"], 4),
                         "bare_median_step_tokens_per_s": round(bare["tokens_per_s"]),
                         "flow_median_step_tokens_per_s": round(piped["tokens_per_s"]),
                         "logged_steps": piped["logged_steps"], "bare_wall_s": round(t1 - t0, 1),
                         "flow_wall_s": round(t2 - t1, 1),
                         # the bench process's peak so far (bare and flow share it; the Prefect server is apart)
                         "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)})
            print(json.dumps(runs[-1]), flush=True)
        report = {"machine": "cpu", "torch_threads": 1, "steps": STEPS, "hidden": HIDDEN, "seq": SEQ,
                  "micro_batch": MB, "runs": runs}
        out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
