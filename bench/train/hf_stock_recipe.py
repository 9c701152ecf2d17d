"""Reference point for training speed: the stock Hugging Face recipe for LoRA / QLoRA
(transformers + peft + bitsandbytes, as their docs show it), on Llama-shaped models with random weights.

Run it on the GPU machine beside your own training benchmark, in the same command, and compare.
  python hf_stock_recipe.py OUT_JSON [llama-1b|llama-8b ...]
Env: SEQ (2048), MB micro-batch (4), STEPS (12), CASES (default "lora,qlora").
Needs bitsandbytes installed on the GPU machine.

peftpipe's copy (the reference lives with the code; shared/bench/hf_stock_recipe.py is the original). With no
knob set it runs exactly the original. Knobs, for like-for-like rows beside peftpipe's options:
  GC=0          no activation checkpointing (the original always checkpoints)
  ADAPTER=bf16  LoRA weights in the model's dtype (peft's autocast_adapter_dtype=False); LoRA only: for QLoRA
                prepare_model_for_kbit_training has already made every non-quantized weight fp32
  LIGER=1       the peer "HF + liger-kernel": liger's Triton kernels patched into Llama (RMSNorm, RoPE, SwiGLU,
                fused linear + cross-entropy) before the model is built"""
import gc
import json
import os
import sys
import time

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

SHAPES = {  # Llama-3.2-1B and Llama-3.1-8B shapes
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8),
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=8),
}
SEQ, MB, STEPS = (int(os.environ.get(k, d)) for k, d in (("SEQ", 2048), ("MB", 4), ("STEPS", 12)))
GC, ADAPTER, LIGER = os.environ.get("GC", "1") != "0", os.environ.get("ADAPTER", "fp32"), os.environ.get("LIGER") == "1"
if LIGER:
    from liger_kernel.transformers import apply_liger_kernel_to_llama
    apply_liger_kernel_to_llama()


def checkpoint(shape: str) -> str:
    path = f"/tmp/ckpt-{shape}"
    if not os.path.exists(path):
        cfg = LlamaConfig(vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0,
                          tie_word_embeddings=False, **SHAPES[shape])
        with torch.device("cuda"):
            LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(path)
        torch.cuda.empty_cache()
    return path


def stock_model(path: str, mode: str):
    if mode == "qlora":
        bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.bfloat16)
        model = LlamaForCausalLM.from_pretrained(path, quantization_config=bnb, dtype=torch.bfloat16,
                                                 device_map={"": 0}, attn_implementation="sdpa")
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=GC)
    else:
        model = LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="sdpa").cuda()
        if GC:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
                           autocast_adapter_dtype=not (ADAPTER == "bf16" and mode == "lora"))
    model.train()  # activation checkpointing only applies in training mode
    return model


def bench(shape: str, mode: str) -> dict:
    model = stock_model(checkpoint(shape), mode)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    torch.cuda.reset_peak_memory_stats()
    x = torch.randint(0, 32000, (MB, SEQ), device="cuda")
    times = []
    for _ in range(STEPS):
        torch.cuda.synchronize()
        t = time.perf_counter()
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    step = sorted(times[3:])[len(times[3:]) // 2]  # median after warm-up
    result = dict(recipe="hf-stock+liger" if LIGER else "hf-stock", shape=shape, mode=mode, ckpt="all" if GC else "none",
                  adapter_dtype=str(next(p for p in params).dtype).replace("torch.", ""), seq=SEQ, micro_batch=MB, step_s=round(step, 4),
                  tokens_per_s=round(MB * SEQ / step), peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                  gpu=torch.cuda.get_device_name())
    del model, opt, params
    gc.collect()
    torch.cuda.empty_cache()
    return result


if __name__ == "__main__":
    out, shapes = sys.argv[1], sys.argv[2:] or list(SHAPES)
    results = []
    for shape in shapes:
        for mode in os.environ.get("CASES", "lora,qlora").split(","):
            results.append(bench(shape, mode))
            print(json.dumps(results[-1]), flush=True)
            json.dump(results, open(out, "w"), indent=1)
