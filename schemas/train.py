"""Config of the base model, the LoRA/QLoRA adapter and the training loop."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from schemas.base import StrictModel


class ModelConfig(StrictModel):
    name_or_path: str = Field("tiny-llama", description="'tiny-llama' builds the offline test model; "
                                                        "otherwise a hub id or local path.")
    revision: str | None = Field(None, description="Hub revision of the base model.")
    trust_remote_code: bool = Field(False, description="Run model code from the hub. Off unless you trust it.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; 'auto' is bf16 on CUDA and fp32 on CPU.")
    attn_implementation: str | None = Field(None, description="e.g. 'sdpa' or 'flash_attention_2'.")


class AdapterConfig(StrictModel):
    method: Literal["lora", "qlora"] = Field("lora", description="LoRA on bf16/fp32 weights or QLoRA on NF4 weights.")
    r: int = Field(16, ge=1, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha; the update is scaled by alpha/r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field("all-linear", description="Modules that get adapters.")
    use_rslora: bool = Field(False, description="Scale by alpha/sqrt(r) (rank-stabilised LoRA).")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")
    modules_to_save: list[str] = Field(default_factory=list, description="Modules trained in full and saved.")
    double_quant: bool = Field(True, description="QLoRA: quantize the quantization constants too.")


class TrainConfig(StrictModel):
    max_steps: int = Field(20, ge=1, description="Optimizer steps.")
    micro_batch_size: int = Field(4, ge=1, description="Rows per forward pass.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    warmup_steps: int = Field(2, ge=0, description="Linear warm-up steps before the cosine decay.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    eval_every: int = Field(10, ge=1, description="Evaluate on the held-out split every N steps.")
    save_every: int = Field(10, ge=1, description="Write a resumable checkpoint every N steps.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    seed: int = Field(0, description="Seed of weights init, data order and dropout.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train.")

    @model_validator(mode="after")
    def _warmup_fits(self) -> "TrainConfig":
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"train.warmup_steps ({self.warmup_steps}) exceeds train.max_steps ({self.max_steps})")
        return self
