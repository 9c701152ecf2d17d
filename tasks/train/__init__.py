"""Training: LoRA/QLoRA adapters on the tokenized split, read as one recipe.

- ``model``: the base model (the tiny offline Llama, a local path or a hub id), loaded for LoRA or QLoRA.
- ``data``: batches from the tokenized rows: a resumable cursor and the one padding-free collate.
- ``loss``: the causal-LM loss on hidden states where a token carries a loss, and the eval loss.
- ``master``: fp32 master copies of bf16 adapter weights, which the optimizer steps.
- ``checkpoint``: resumable checkpoints (trainable weights, optimizer, scheduler, RNG, data position), sharded
  (torch.distributed.checkpoint) under FSDP.
- ``launch``: data-parallel training through torchrun, on one node or several (rendezvous settings);
  ``rank`` is what each rank runs; ``visible_gpus`` is what the GPU concurrency follows.
- ``fsdp``: FSDP2 sharding (``train.parallel: fsdp``), the adapter gathered for saving.
- ``loop``: the one training loop (setup, steps, evaluation, checkpoints, save) every objective runs.
- ``synthetic``: synthetic tokenized splits for tests and benchmarks.
- ``recipe``: the SFT objective on the loop; the Prefect task.
- ``preference``: the DPO/KTO objective on the same loop, for ``train.objective: dpo | kto`` (reference = the
  base, adapter disabled);
  ``preference_loss``: DPO (sigmoid, IPO, hinge) and KTO on summed response log-probs, the fused log-prob head;
  ``preference_data``: both sides of a pair (or KTO's examples and KL sequences) in one batch.
"""
