"""Evaluate a trained adapter against its base: held-out loss and perplexity of both, proof that the adapter
changes the model's output, a few greedy generations to read, and task metrics of both models' answers on
every eval set (``tasks.evaluate.scoring``)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from prefect import task

from schemas.evaluate import EvalConfig
from schemas.pipeline import PipelineConfig
from schemas.tokenize import IGNORE_INDEX
from tasks.core.pause import pause_point
from tasks.core.stage import StageOutput, code_version, digest
from tasks.evaluate.evalsets import EvalSet, eval_sets_digest, file_set, heldout_set
from tasks.evaluate.scoring import flat_metrics, score_sets
from tasks.train.data import TrainingRow, load_rows
from tasks.train.loss import mean_eval_loss, use_fused_loss
from tasks.train.model import load_base_model, load_base_tokenizer, resolve_device, set_cpu_threads

FIXED_PROMPT = [{"role": "user", "content": "Name three primary colours."}]


def load_eval_sets(cfg: EvalConfig, eval_records_dir: Path | None) -> list[EvalSet]:
    """The curated eval split (when ``cfg.heldout`` and a records dir is given) and every configured file."""
    sets = []
    if cfg.heldout and eval_records_dir is not None and Path(eval_records_dir).is_dir():
        sets.append(heldout_set(Path(eval_records_dir), cfg.family_field, cfg.max_items))
    sets.extend(file_set(s, cfg.max_items) for s in cfg.eval_sets)
    return sets


def prompt_ids(row: TrainingRow) -> list[int]:
    """The prompt of the row's first sequence: its tokens up to the first one that carries a loss."""
    first_seq_end = next((i for i in range(1, len(row)) if row.position_ids[i] == 0), len(row))
    has_loss = np.nonzero(row.targets[:first_seq_end] != IGNORE_INDEX)[0]
    end = int(has_loss[0]) + 1 if len(has_loss) else min(first_seq_end, 16)
    return row.input_ids[:end].tolist()


def encode_fixed_prompt(tokenizer) -> list[int]:
    try:
        ids = tokenizer.apply_chat_template(FIXED_PROMPT, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    except Exception:  # a tokenizer without a usable chat template still has plain text
        ids = tokenizer(FIXED_PROMPT[0]["content"])["input_ids"]
    return list(ids)


@torch.no_grad()
def generate(model, tokenizer, ids: list[int], device: torch.device, max_new_tokens: int = 24) -> str:
    x = torch.tensor([ids], device=device)
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)


def evaluate_adapter(tokenized_dir: Path, base: str, adapter_dir: Path, cfg: PipelineConfig,
                     n_samples: int = 2, eval_records_dir: Path | None = None) -> dict:
    """See ``_evaluate_adapter``; restores the process's CPU thread count afterwards."""
    threads = torch.get_num_threads()
    try:
        return _evaluate_adapter(Path(tokenized_dir), base, Path(adapter_dir), cfg, n_samples, eval_records_dir)
    finally:
        torch.set_num_threads(threads)


def _evaluate_adapter(tokenized_dir: Path, base: str, adapter_dir: Path, cfg: PipelineConfig,
                      n_samples: int, eval_records_dir: Path | None) -> dict:
    """Eval loss and perplexity of the base and of base + adapter on ``tokenized_dir/eval``; the largest
    absolute logit difference the adapter makes on a fixed prompt (> 0 means it changes the model);
    ``n_samples`` greedy generations, with and without the adapter, from eval prompts; and, with
    ``evaluate.task_metrics``, both models' answers to every eval set scored (``task``, flattened into
    MLflow metric names in ``task_metrics``). ``eval_records_dir`` holds the curated eval split's records."""
    from peft import PeftModel

    device = resolve_device(cfg.train)
    rows = load_rows(Path(tokenized_dir) / "eval")
    tokenizer = load_base_tokenizer(base, cfg.model, cfg.tokenize.chat_template)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    fused = use_fused_loss(cfg.train, device)
    model = PeftModel.from_pretrained(load_base_model(cfg.model, cfg.adapter, device, base=base), adapter_dir)
    set_cpu_threads(model, device, cfg.train.cpu_threads)
    model.eval()
    model.config.use_cache = True  # generation wants its KV cache back

    adapter_loss = mean_eval_loss(model, rows, cfg.train, pad_id, device, fused) if rows else float("nan")
    with model.disable_adapter():
        base_loss = mean_eval_loss(model, rows, cfg.train, pad_id, device, fused) if rows else float("nan")

    fixed = torch.tensor([encode_fixed_prompt(tokenizer)], device=device)
    with torch.no_grad():
        tuned_logits = model(input_ids=fixed).logits.float()
        with model.disable_adapter():
            base_logits = model(input_ids=fixed).logits.float()
    max_diff = float((tuned_logits - base_logits).abs().max())

    samples = []
    for row in rows[:n_samples]:
        ids = prompt_ids(row)
        with model.disable_adapter():
            base_text = generate(model, tokenizer, ids, device)
        samples.append({"prompt": tokenizer.decode(ids, skip_special_tokens=False),
                        "adapter": generate(model, tokenizer, ids, device), "base": base_text})

    sets = load_eval_sets(cfg.evaluate, eval_records_dir) if cfg.evaluate.task_metrics else []
    task_results = score_sets(model, tokenizer, sets, cfg.evaluate, device)

    def ppl(loss: float) -> float:
        return math.exp(min(loss, 50.0)) if math.isfinite(loss) else float("nan")
    return {"base_eval_loss": base_loss, "adapter_eval_loss": adapter_loss,
            "base_perplexity": ppl(base_loss), "adapter_perplexity": ppl(adapter_loss),
            "eval_loss_delta": adapter_loss - base_loss, "max_abs_logit_diff": max_diff,
            "adapter_changes_output": max_diff > 0, "samples": samples,
            "task": task_results, "task_metrics": flat_metrics(task_results)}


@task(name="evaluate")
def evaluate_task(tokenized: StageOutput, base: str, adapter_dir: Path, cfg: PipelineConfig,
                  records: StageOutput | None = None, n_samples: int = 2) -> dict:
    """Prefect wrapper over ``evaluate_adapter`` for the tokenized stage's eval split and the eval records of
    ``records`` (a split-shaped stage: ``records.data('eval')``).

    The result is kept beside the adapter, keyed by the eval data, the evaluate config and the eval set files,
    so a cached rerun does not evaluate again.
    """
    key = digest(code_version("tasks.evaluate"), tokenized.key, base, records.key if records else None,
                 cfg.evaluate.cache_settings(),
                 eval_sets_digest(cfg.evaluate), n_samples)
    cached = Path(adapter_dir).parent / f"evaluation-{key}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    result = evaluate_adapter(tokenized.path, base, Path(adapter_dir), cfg, n_samples,
                              records.data("eval") if records else None)
    tmp = cached.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(result, default=str))
    pause_point("evaluate", tmp=tmp)  # test only: the result is written, not yet in place
    os.replace(tmp, cached)  # atomic: a killed run never leaves half a result
    return result
