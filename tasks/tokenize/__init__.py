"""Stage ``tokenize``: chat template, assistant-only masks, length policy and packing.

- ``tokenizer``: train the offline sample tokenizer; load any tokenizer with a pad token and a chat template.
- ``chat``: conversations to ``input_ids`` and ``labels``: the reasoning policy, assistant-only masks, the
  length policy; ``encode_chat(tokenizer, messages, cfg) -> (input_ids, labels)`` is the stage's own path for
  one conversation, exported here.
- ``spans``: where each message sits in the rendered chat, located structurally (sentinel renders).
- ``verify``: every mask checked by positions and decoded text where it is made.
- ``report``: what the chat template did, per template, and the cap on template rejects.
- ``show``: masks made visible (``peftpipe masks``).
- ``packing``: whole sequences packed into rows of ``max_seq_len``.
- ``stage``: the stage over the split's train and eval shards, and its Prefect task.
"""

from tasks.tokenize.chat import MaskReject, encode_chat, encode_chat_sequences

__all__ = ["MaskReject", "encode_chat", "encode_chat_sequences"]
