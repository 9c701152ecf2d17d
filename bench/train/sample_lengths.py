"""Token lengths of the bundled sample's conversations, for the speed benchmark's realistic-length case.

Lengths are in the offline sample tokenizer's tokens (a 2048-entry byte-level BPE trained on the sample, chat
template applied), since no Llama tokenizer can be downloaded here. Writes bench/train/sample_lengths.json.
  .venv/bin/python bench/train/sample_lengths.py
"""
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tasks.tokenize.tokenizer import load_tokenizer, train_sample_tokenizer  # noqa: E402


def conversations(path: Path):
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        msgs = rec.get("messages") if isinstance(rec, dict) else None
        if isinstance(msgs, list) and msgs and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                   and m.get("role") for m in msgs):
            yield [{"role": m["role"], "content": m["content"]} for m in msgs]


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[2]
    convs = list(conversations(root / "data" / "sample.jsonl"))
    with tempfile.TemporaryDirectory() as tmp:
        train_sample_tokenizer((m["content"] for c in convs for m in c), Path(tmp), vocab_size=2048)
        tok = load_tokenizer(tmp)
        lengths = [len(tok.apply_chat_template(c, tokenize=True)["input_ids"]) for c in convs]
    out = root / "bench" / "train/sample_lengths.json"
    out.write_text(json.dumps({"n": len(lengths), "mean": sum(lengths) / len(lengths), "max": max(lengths),
                               "lengths": lengths}) + "\n")
    print(f"{len(lengths)} conversations, mean {sum(lengths) / len(lengths):.0f} tokens, max {max(lengths)}")
