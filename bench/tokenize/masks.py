"""What structural masks cost: ``tasks.tokenize.chat.encode_records`` (sentinel renders + verification)
against the text-search masks it replaced and against transformers' ``apply_chat_template(...,
return_assistant_tokens_mask=True)``, on the same chats, interleaved, best of ``--repeats``.

    .venv/bin/python bench/tokenize/masks.py [--records 3000] [--repeats 3] [--out bench/tokenize/masks_results.json]

Templates: the sample tokenizer's (``{% generation %}`` blocks, so transformers can mask it), Llama 3's and
Qwen3's as shipped (tests/tasks/tokenize/templates; no generation blocks, so only the two peftpipe paths). The
old path is the chat module at commit ``REFERENCE``, loaded from git. Memory: tracemalloc peak of the call.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "tasks" / "tokenize"))

from schemas.tokenize import TokenizeConfig  # noqa: E402
from tasks.tokenize.chat import encode_records  # noqa: E402
from tasks.tokenize.tokenizer import load_tokenizer, train_sample_tokenizer  # noqa: E402

REFERENCE = "57bc678"  # the text-search masks, before issue 18
WORDS = ("the model learns to answer questions about data pipelines and adapters while the user asks short "
         "and long questions 🙂 ünïcode").split()


def old_chat_module():
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{REFERENCE}:tasks/tokenize/chat.py"],
                         check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_chat.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_chat", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_chat"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def chats(n: int, seed: int = 0) -> list[list[dict]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        conv = [{"role": "system", "content": "You are terse."}] if rng.random() < 0.3 else []
        for _ in range(int(rng.integers(1, 4))):
            conv.append({"role": "user", "content": " ".join(rng.choice(WORDS, int(rng.integers(3, 40))))})
            conv.append({"role": "assistant", "content": " ".join(rng.choice(WORDS, int(rng.integers(1, 120))))})
        out.append(conv)
    return out


def timed(fn):
    tracemalloc.start()
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, wall, cpu, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=3000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "tokenize" / "masks_results.json"))
    args = ap.parse_args()
    from families import family_tokenizer

    old = old_chat_module()
    convs = chats(args.records)
    ids = [str(i) for i in range(len(convs))]
    sample = load_tokenizer(str(train_sample_tokenizer([" ".join(WORDS)] * 50, Path(tempfile.mkdtemp()) / "t",
                                                       vocab_size=400)))
    cfg = TokenizeConfig(max_seq_len=1 << 16)
    results = []
    for name, tok in (("sample ({% generation %})", sample), ("llama3 (shipped)", family_tokenizer("llama3")),
                      ("qwen3 (shipped)", family_tokenizer("qwen3"))):
        paths = {"structural (peftpipe now)": lambda t=tok: encode_records(t, ids, convs, cfg),
                 "text search (before)": lambda t=tok: old.encode_records(t, ids, convs, cfg,
                                                                          old.mask_method(t, "assistant"))}
        if "generation" in name:
            paths["apply_chat_template + mask"] = lambda t=tok: t.apply_chat_template(
                convs, return_dict=True, return_assistant_tokens_mask=True)
        best: dict[str, list] = {}
        for _ in range(args.repeats):
            for label, fn in paths.items():
                out, wall, cpu, peak = timed(fn)
                if label not in best or wall < best[label][0]:
                    best[label] = [wall, cpu, peak, out]
        tokens = sum(len(s) for s in best["structural (peftpipe now)"][3].seqs)
        for label, (wall, cpu, peak, out) in best.items():
            kept = len(out.seqs) if hasattr(out, "seqs") else len(out["input_ids"])
            results.append({"template": name, "path": label, "records": len(convs), "kept": kept,
                            "tokens": tokens, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                            "records_per_s": round(len(convs) / wall), "tokens_per_s": round(tokens / wall),
                            "peak_mib": round(peak / 2**20, 1)})
            print(json.dumps(results[-1]))
    Path(args.out).write_text(json.dumps({"machine": platform.platform(), "python": platform.python_version(),
                                          "command": " ".join(sys.argv), "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
