"""Config of the evaluate stage: which prompts are scored, how answers are generated and scored, the judge.

The task family of a record lives in its ``meta`` JSON under ``family_field`` (``meta.task`` by default): every
task metric is reported overall and once per family, so a family whose training answers were noisy shows up
on its own line.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from schemas.base import StrictModel

TaskMetric = Literal["exact_match", "normalized_exact_match", "contains_answer", "token_f1", "rouge_l"]
TASK_METRICS: tuple[str, ...] = ("exact_match", "normalized_exact_match", "contains_answer", "token_f1", "rouge_l")
HELDOUT = "heldout"  # the name of the curated eval split among the eval sets


class EvalSetConfig(StrictModel):
    """A separate eval set: a JSONL or Parquet file of prompts with references. It never enters training:
    training records that share too many word n-grams with it are held out (``leak_ngram``/``leak_max``)."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_\-]+$", description=(
        "Short name; metrics are logged as task/<name>/<metric>. 'heldout' is the curated eval split's."))
    path: str = Field(..., description="A .jsonl/.json (JSON lines) or .parquet file.")
    prompt_field: str = Field("prompt", description=(
        "Column with the prompt: a string (one user message) or a list of {role, content} messages."))
    reference_field: str = Field("reference", description="Column with the reference answer (a string).")
    family_field: str | None = Field("task", description=(
        "Column with the task family (optional per row); metrics are also reported per family."))
    limit: int | None = Field(None, ge=1, description="Score at most this many rows (the first ones).")

    @field_validator("name")
    @classmethod
    def _not_heldout(cls, name: str) -> str:
        if name == HELDOUT:
            raise ValueError(f"'{HELDOUT}' names the curated eval split; give this set another name")
        return name

    @field_validator("path")
    @classmethod
    def _known_format(cls, path: str) -> str:
        if Path(path).suffix.lower() not in (".jsonl", ".json", ".parquet"):
            raise ValueError(f"eval set {path!r}: only .jsonl, .json (JSON lines) and .parquet are read")
        return path


class JudgeConfig(StrictModel):
    """An LLM judge on an OpenAI-compatible endpoint (vLLM, llama.cpp server, a hosted API). Off by default:
    it sends prompts, references and answers to that endpoint."""

    enabled: bool = Field(False, description="Score answers with the judge too (metric judge_score, 0..1).")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="Endpoint root; POST {base_url}/chat/completions.")
    model: str = Field("judge", description="Model name sent in the request.")
    api_key_env: str | None = Field("OPENAI_API_KEY", description=(
        "Environment variable holding the bearer token (never logged); unset or empty: no Authorization header."))
    max_items: int = Field(64, ge=1, description="Judge at most this many answers per eval set and model.")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")
    max_tokens: int = Field(16, ge=1, description="Tokens the judge may answer with (a score needs a few).")
    scale: int = Field(5, ge=2, description="The judge rates 1..scale; judge_score = (rating - 1) / (scale - 1).")


class EvalConfig(StrictModel):
    """Task-level evaluation: greedy answers of the base and of base + adapter on prompts with references."""

    # Left padding gives every prompt the answer it gets alone (tests/tasks/evaluate/test_generation.py), and
    # the table size only shapes what is logged: neither changes an evaluation's result.
    SPEED_ONLY: ClassVar[tuple[str, ...]] = ("batch_size", "table_rows")

    task_metrics: bool = Field(True, description="Generate and score answers (off: eval loss only).")
    metrics: list[TaskMetric] = Field(default_factory=lambda: list(TASK_METRICS), description=(
        "Task metrics to compute, each a mean over items in 0..1."))
    family_field: str | None = Field("task", description=(
        "Key in a held-out record's meta JSON naming its task family (e.g. meta.task = 'arithmetic'); "
        "None: overall metrics only."))
    heldout: bool = Field(True, description="Score the curated eval split (prompt = every turn before the last "
                                            "assistant message, reference = that message).")
    eval_sets: list[EvalSetConfig] = Field(default_factory=list, description="Separate eval sets to score too.")
    max_items: int | None = Field(256, ge=1, description="Score at most this many prompts per eval set "
                                                         "(the first ones in id order); None: all.")
    max_new_tokens: int = Field(64, ge=1, description="Length cap of each generated answer.")
    max_prompt_tokens: int = Field(1024, ge=8, description="Longer prompts are skipped (counted, never cut).")
    batch_size: int = Field(16, ge=1, description="Prompts per generate() call (left-padded).")
    leak_ngram: int = Field(8, ge=1, description="Word n-gram size of the check that keeps eval sets out of training.")
    leak_max: float = Field(0.5, ge=0, le=1, description=(
        "A training record sharing more than this share of its n-grams with an eval set is held out of training."))
    table_rows: int = Field(200, ge=0, description="Rows per eval set in the MLflow table of answers.")
    rank_metric: TaskMetric = Field("normalized_exact_match", description=(
        "The task metric a sweep ranks variants by (on the first eval set scored)."))
    judge: JudgeConfig = Field(default_factory=JudgeConfig)

    @model_validator(mode="after")
    def _names_unique(self) -> EvalConfig:
        names = [s.name for s in self.eval_sets]
        if len(set(names)) != len(names):
            raise ValueError(f"eval set names must be unique (got {names})")
        if self.rank_metric not in self.metrics:
            raise ValueError(f"rank_metric {self.rank_metric!r} is not among metrics {self.metrics}")
        return self
