"""On the GPU, in bf16 and compiled: the trainer's fast path against plain HF + peft at step 0 (1B LoRA, QLoRA).

  python bench/train/gpu_equivalence.py OUT_JSON [llama-1b]
The CPU test (tests/tasks/train/test_equivalence.py) makes the same comparison in fp32. Here ours is what the
GPU configs run: ``load_base_model`` (bf16, NF4 without the fp32 upcast), ``add_adapter`` with bf16 LoRA
weights, ``compile_layers``, rows through ``load_rows`` and ``collate``, the chunked ``causal_lm_loss_sum``.
The reference is the stock recipe's model (bench/train/hf_stock_recipe.py: fp32 LoRA weights, for QLoRA
``prepare_model_for_kbit_training``) scored by ``model(input_ids, labels=...)``. Both adapters start from the
same random A and B. Printed: both losses, and the cosine between the two sets of LoRA gradients.
"""
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench" / "train"))
try:
    import prefect  # noqa: F401
except ImportError:  # the GPU machine has no Prefect; nothing here uses it
    import types
    _shim = types.ModuleType("prefect")
    _shim.task = lambda *a, **k: a[0] if a and callable(a[0]) else (lambda f: f)
    sys.modules["prefect"] = _shim
from schemas.train import AdapterConfig, ModelConfig  # noqa: E402
from tasks.train.data import collate, load_rows  # noqa: E402
from tasks.train.loss import causal_lm_loss_sum  # noqa: E402
from tasks.train.model import add_adapter, compile_layers, load_base_model  # noqa: E402
from tasks.train.synthetic import markov_rows, write_split  # noqa: E402

os.environ["GC"] = "0"  # the stock model without recomputation: it changes the speed, not the numbers
from hf_stock_recipe import checkpoint, stock_model  # noqa: E402

SEQ, MB = int(os.environ.get("SEQ", 1024)), int(os.environ.get("MB", 2))


def reference(path: str, method: str):
    return stock_model(path, method)


def ours(path: str, method: str):
    adapter = AdapterConfig(method=method, r=16, alpha=32, dropout=0.0, target_modules="all-linear",
                            adapter_dtype="auto")
    model = add_adapter(load_base_model(ModelConfig(name_or_path=path, attn_implementation="sdpa"), adapter,
                                        "cuda"), adapter)
    compile_layers(model)
    return model.train()


def lora_params(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def compare(path: str, method: str, rows, ids: torch.Tensor) -> dict:
    ref = reference(path, method)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the same random A and B in both (peft's B = 0 would leave A without gradient)
        for p in lora_params(ref).values():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    ref_loss = ref(input_ids=ids, labels=ids).loss
    ref_loss.backward()
    ref_grads = {n: p.grad.float().clone() for n, p in lora_params(ref).items()}
    start = {n: p.detach().clone() for n, p in lora_params(ref).items()}
    del ref
    torch.cuda.empty_cache()
    model = ours(path, method)
    with torch.no_grad():
        for n, p in lora_params(model).items():
            p.copy_(start[n])
    batch = collate(rows, "padded", pad_id=0, multiple=128).to(torch.device("cuda"))
    loss_sum = causal_lm_loss_sum(model, batch.input_ids, batch.position_ids, batch.targets, fused=True)
    (loss_sum / batch.n_loss_tokens).backward()
    grads = {n: p.grad.float() for n, p in lora_params(model).items()}
    names = sorted(ref_grads)
    flat = [torch.cat([g[n].reshape(-1) for n in names]) for g in (grads, ref_grads)]
    cos = {n: float(torch.nn.functional.cosine_similarity(grads[n].reshape(1, -1), ref_grads[n].reshape(1, -1)))
           for n in names}
    row = {"method": method, "hf_peft_loss": round(float(ref_loss), 5),
           "peftpipe_loss": round(float(loss_sum) / batch.n_loss_tokens, 5),
           "grad_cosine_all": round(float(torch.nn.functional.cosine_similarity(flat[0][None], flat[1][None])), 5),
           "grad_cosine_min_tensor": round(min(cos.values()), 5), "min_tensor": min(cos, key=cos.get),
           "grad_norm_ratio": round(float(flat[0].norm() / flat[1].norm()), 5), "lora_tensors": len(names)}
    del model
    torch._dynamo.reset()
    torch.cuda.empty_cache()
    return row


def main() -> None:
    out, shape = Path(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "llama-1b")
    path = checkpoint(shape)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = markov_rows(MB, 2048, SEQ, seed=0)
        rows = load_rows(write_split(Path(tmp) / "train", raw))
        ids = torch.stack([torch.as_tensor(r["input_ids"]) for r in raw]).cuda()
        for method in ("lora", "qlora"):
            results.append({"shape": shape, "seq": SEQ, "micro_batch": MB, **compare(path, method, rows, ids)})
            print(json.dumps(results[-1]), flush=True)
            out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
