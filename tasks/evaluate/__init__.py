"""Stage ``evaluate``: the trained adapter against its base, on held-out data (``stage``); a DPO / KTO adapter
on the held-out pairs: reward accuracy, margin, which response each model prefers (``preference``).

``evalsets`` (prompts with references: the curated eval split, eval set files), ``generation`` (greedy,
batched, left-padded answers), ``metrics`` (exact match, normalised exact match, contains-answer, token F1,
ROUGE-L; overall and per task family), ``judge`` (the optional LLM judge), ``scoring`` (both models' answers
scored), ``report`` (task metrics, LoggedModel links and the answer table in MLflow) and ``leakcheck`` (eval
set files never enter training).
"""
