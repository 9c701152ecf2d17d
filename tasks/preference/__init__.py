"""Preference data from annotations: the stage between the filters and training for ``train.objective: dpo |
kto``.

- ``pairs``: the pure decisions: group -> candidate pairs -> kept / dropped with a reason; KTO labels.
- ``stage``: reads the filtered records, groups them by prompt, writes pairs (or labels) split by prompt, the
  rejects and the ledger; the Prefect task.
- ``tokenize``: pairs (examples) -> token ids with labels on the final response, by the SFT masking code.
- ``tracking``: the pairs as MLflow dataset inputs with digests; the prompt / candidate-pair balances.
"""
