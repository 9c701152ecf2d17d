"""Config of the base model, the LoRA/QLoRA adapter and the training loop."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from schemas.base import StrictModel
from schemas.preference import PreferenceLossConfig


class ModelConfig(StrictModel):
    name_or_path: str = Field("tiny-llama", description="'tiny-llama' builds the offline test model; "
                                                        "otherwise a hub id or local path.")
    revision: str | None = Field(None, description="Hub revision of the base model.")
    trust_remote_code: bool = Field(False, description="Run model code from the hub. Off unless you trust it.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; 'auto' is bf16 on CUDA and fp32 on CPU.")
    attn_implementation: str | None = Field(None, description="e.g. 'sdpa' or 'flash_attention_2'.")
    tiny_hidden_size: int = Field(64, ge=8, description="tiny-llama only: hidden width.")
    tiny_layers: int = Field(2, ge=1, description="tiny-llama only: decoder layers.")
    tiny_heads: int = Field(4, ge=1, description="tiny-llama only: attention heads.")
    tiny_vocab_size: int = Field(2048, ge=300, description="tiny-llama only: size of the sample BPE vocabulary.")


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
    adapter_dtype: Literal["float32", "auto"] = Field(
        "float32", description="LoRA weights in fp32 (peft's default; the LoRA matmuls then run in fp32/TF32) "
                               "or in the model's dtype, bf16 on CUDA (less memory traffic; the optimizer still "
                               "steps fp32 master copies unless train.master_weights is off).")
    init: Literal["default", "gaussian", "loftq"] = Field(
        "default", description="How the LoRA weights start: 'default' (A random, B zero, so training starts from "
                               "the base itself), 'gaussian' (A Gaussian), or 'loftq' (QLoRA only, CUDA: A and B "
                               "start as a rank-r SVD fit of what NF4 rounding took from each weight, read from the "
                               "base's local safetensors, so training starts closer to the unquantized base).")

    @model_validator(mode="after")
    def _loftq_needs_qlora(self) -> AdapterConfig:
        if self.init == "loftq" and self.method != "qlora":
            raise ValueError("adapter.init 'loftq' fits the NF4 quantization error: it needs adapter.method 'qlora'")
        return self


class TrainConfig(StrictModel):
    # Change only how fast (or how safely) the same steps run, never the steps themselves; the recipe's
    # equivalence tests hold the loss and layout options to that promise. ``num_processes`` is here because
    # the adapter key takes the resolved number of ranks instead (see tasks.train.recipe.adapter_key).
    SPEED_ONLY: ClassVar[tuple[str, ...]] = (
        "save_every", "keep_checkpoints", "gradient_checkpointing", "checkpoint_layers", "batch_layout",
        "pad_to_multiple_of", "loss", "loss_chunk_tokens", "compile", "cpu_threads", "num_processes",
        "parallel", "nnodes", "node_rank", "master_addr", "master_port", "rdzv_endpoint", "rdzv_id")

    objective: Literal["sft", "dpo", "kto"] = Field(
        "sft", description="What the adapter learns: 'sft' the responses themselves; 'dpo' to prefer the chosen "
                           "over the rejected response of each pair; 'kto' from responses labelled desirable or "
                           "undesirable. dpo/kto add the preference stage to curation (docs/concepts.md).")
    preference: PreferenceLossConfig = Field(default_factory=PreferenceLossConfig,
                                             description="beta and loss variant of dpo / kto.")
    max_steps: int = Field(20, ge=1, description="Optimizer steps.")
    micro_batch_size: int = Field(4, ge=1, description="Rows per forward pass.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step (when tokens_per_step is unset).")
    tokens_per_step: int | None = Field(
        None, ge=1, description="Token-based batch: accumulate micro-batches until at least this many tokens "
                                "are in the step (overrides grad_accum); the loss is averaged over the step's "
                                "loss tokens.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="The cosine decays to lr * min_lr_ratio.")
    warmup_steps: int = Field(2, ge=0, description="Linear warm-up steps before the cosine decay.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    master_weights: bool = Field(
        True, description="With adapter weights in bf16/fp16 (adapter.adapter_dtype: auto on CUDA), the optimizer "
                          "steps fp32 master copies and writes them back rounded. Off, an update smaller than "
                          "bf16's resolution of a weight (about |w|/512) is lost, as most are late in a cosine "
                          "schedule (BENCHMARKS.md). No effect when the weights are fp32.")
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit"] = Field(
        "adamw", description="torch AdamW (fused on CUDA) or bitsandbytes' 8-bit / paged AdamW.")
    eval_every: int = Field(10, ge=1, description="Evaluate on the held-out split every N steps.")
    eval_max_batches: int | None = Field(None, ge=1, description="Cap on eval micro-batches (None: whole split).")
    early_stop_patience: int | None = Field(
        None, ge=1, description="Stop when the eval loss has not improved for this many evaluations.")
    save_every: int = Field(10, ge=1, description="Write a resumable checkpoint every N steps.")
    keep_checkpoints: int = Field(2, ge=1, description="How many of the latest checkpoints to keep.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory "
                                                            "(non-reentrant).")
    checkpoint_layers: list[int] | None = Field(
        None, description="With gradient_checkpointing: only these decoder layers recompute (None: all). "
                          "Fewer layers trade memory back for speed.")
    batch_layout: Literal["flat", "padded"] = Field(
        "padded", description="'padded' stacks the packed rows, padding to the longest one (rows are nearly "
                              "full after packing; this is the layout benchmarked with sdpa and flex "
                              "attention); 'flat' concatenates a micro-batch into one padding-free row whose "
                              "position_ids restart per sequence (for flash-attention's varlen path).")
    pad_to_multiple_of: int = Field(
        64, ge=1, description="Round each micro-batch's width up to a multiple of this, so compiled layers see "
                              "few distinct shapes (each new one recompiles); the pad tokens carry no loss.")
    loss: Literal["auto", "chunked", "standard"] = Field(
        "auto", description="'chunked' fuses the lm_head with the cross-entropy chunk by chunk so the full "
                            "logits never exist; 'auto' uses it on CUDA.")
    loss_chunk_tokens: int = Field(2048, ge=16, description="Tokens per chunk of the chunked loss.")
    compile: bool = Field(False, description="torch.compile each decoder layer (regional compilation: one "
                                             "compile serves every layer); fuses the small ops around the matmuls.")
    merged_export: bool = Field(False, description="Also write the base with the adapter merged in, in bf16 "
                                                   "(QLoRA: into an unquantized copy of the base).")
    cpu_threads: int | None = Field(
        None, ge=1, description="Intra-op threads when training on CPU; None: 1 for models under 50M weights "
                                "(their tiny matmuls gain nothing from threads, and OpenMP spin-waits made steps "
                                "20x slower on a loaded 2-core machine), torch's default otherwise.")
    num_processes: int | None = Field(
        None, ge=1, description="Data-parallel ranks (torchrun, one per GPU); None: every visible GPU, "
                                "or 1 on CPU. Each optimizer step takes micro-batches from every rank.")
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="With several ranks: 'ddp' keeps a full copy of the model on every rank and sums the "
                           "adapter gradients; 'fsdp' shards every weight (the frozen base too, QLoRA's 4-bit "
                           "weights included) over the ranks with FSDP2, per decoder layer, for a model larger "
                           "than one GPU. Both take the same steps; checkpoints are sharded under fsdp.")
    nnodes: int = Field(1, ge=1, description="Machines that train together (torchrun --nnodes); each runs "
                                             "num_processes ranks. Above 1 the rendezvous settings below apply.")
    node_rank: int = Field(0, ge=0, description="This machine's index among nnodes (torchrun --node-rank); "
                                                "node 0 logs and writes the outputs.")
    master_addr: str | None = Field(None, description="Static rendezvous: host of node 0 (torchrun "
                                                      "--master-addr); used when rdzv_endpoint is unset.")
    master_port: int = Field(29500, ge=1, le=65535, description="Static rendezvous: port on master_addr.")
    rdzv_endpoint: str | None = Field(
        None, description="Elastic rendezvous: host:port of the c10d store that every node joins (torchrun "
                          "--rdzv-backend c10d --rdzv-endpoint); it takes precedence over master_addr.")
    rdzv_id: str | None = Field(None, description="Job id shared by the nodes of one training (torchrun "
                                                  "--rdzv-id); None: derived from the adapter's output path.")
    seed: int = Field(0, description="Seed of weights init, data order and dropout.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train.")

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainConfig:
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"train.warmup_steps ({self.warmup_steps}) exceeds train.max_steps ({self.max_steps})")
        if self.node_rank >= self.nnodes:
            raise ValueError(f"train.node_rank ({self.node_rank}) must be below train.nnodes ({self.nnodes})")
        if self.nnodes > 1 and not (self.rdzv_endpoint or self.master_addr):
            raise ValueError("train.nnodes > 1 needs a rendezvous: set train.rdzv_endpoint (host:port) or "
                             "train.master_addr")
        if self.objective == "kto" and self.preference.precompute_ref:
            # KTO's reference term includes the KL sequences, which depend on the batch: nothing to precompute.
            raise ValueError("train.preference.precompute_ref applies to train.objective dpo only")
        return self
