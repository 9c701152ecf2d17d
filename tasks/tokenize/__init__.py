"""Stage ``tokenize``: chat template, assistant-only masks, length policy and packing.

- ``tokenizer``: train the offline sample tokenizer; load any tokenizer with a pad token and a chat template.
- ``chat``: one conversation to ``input_ids`` and ``labels`` (masks).
- ``packing``: whole sequences packed into rows of ``max_seq_len``.
- ``stage``: the stage over the split's train and eval shards, and its Prefect task.
"""
