"""The base model: build the tiny offline Llama, or pass a hub id through; load it (LoRA or QLoRA) and wrap it.

"tiny-llama" is a 2-layer Llama with random (seeded) weights and a BPE tokenizer trained on the corpus, so the
whole pipeline runs offline in seconds. Any other name is a hub id or a local path, loaded as it is.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from prefect import task

from schemas.pipeline import PipelineConfig
from schemas.train import AdapterConfig, ModelConfig, TrainConfig
from tasks.core.pause import pause_point
from tasks.core.stage import IO_RETRIES, StageOutput, code_version, digest, publish_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel

TINY = "tiny-llama"
TINY_SEED = 0


def resolve_device(train_cfg: TrainConfig) -> torch.device:
    """'auto' is the first GPU when there is one; asking for CUDA on a machine without it is an error."""
    if train_cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but CUDA is not available on this machine")
    if train_cfg.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))  # one GPU per process under torchrun
    return torch.device("cuda", local_rank)


def resolve_dtype(model_cfg: ModelConfig, device: torch.device) -> torch.dtype:
    """bf16 on CUDA, fp32 on CPU, unless the config names a dtype."""
    if model_cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, model_cfg.dtype)


def _corpus_digest(corpus_dir: Path) -> str:
    import hashlib

    from tasks.tokenize.tokenizer import tokenizer_corpus
    h = hashlib.sha256()
    for text in tokenizer_corpus(corpus_dir):
        h.update(text.encode() + b"\0")
    return h.hexdigest()[:16]


def build_tiny_llama(tokenizer_dir: Path, out_dir: Path, model_cfg: ModelConfig, seed: int = TINY_SEED) -> Path:
    """Save a seeded random LlamaForCausalLM sized to the tokenizer in ``tokenizer_dir`` into ``out_dir``."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    heads = model_cfg.tiny_heads
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=model_cfg.tiny_hidden_size, intermediate_size=model_cfg.tiny_hidden_size * 3,
        num_hidden_layers=model_cfg.tiny_layers, num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),  # grouped-query attention, as the real Llamas have
        max_position_embeddings=8192, tie_word_embeddings=False,
        # 0.1, not Llama's 0.02: with the frozen head that small, logits stay near uniform and a LoRA on the
        # tiny model barely moves the loss in the few dozen steps a CPU run takes.
        initializer_range=0.1,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def _tiny_complete(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def prepare_base_model(model_cfg: ModelConfig, workdir: Path, corpus_dir: Path | None) -> str:
    """The base model to train on: a path to the tiny model built for this corpus, or the configured hub id.

    The tiny model is cached under ``workdir/models`` by a digest of the corpus and the model config, and is
    written to a temporary directory first, so a killed build never leaves a half model that looks finished.
    """
    if model_cfg.name_or_path != TINY:
        return local_base_or_hub_id(model_cfg.name_or_path)
    if corpus_dir is None:
        raise ValueError("model 'tiny-llama' trains its tokenizer on the corpus: pass corpus_dir")
    from tasks.tokenize.tokenizer import tokenizer_corpus, train_sample_tokenizer

    key = digest(code_version("tasks.train.model", "tasks.tokenize.tokenizer"), model_cfg, _corpus_digest(corpus_dir))
    final = Path(workdir) / "models" / f"{TINY}-{key}"
    if _tiny_complete(final):
        return str(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        train_sample_tokenizer(tokenizer_corpus(corpus_dir), tmp, vocab_size=model_cfg.tiny_vocab_size)
        pause_point("prepare-base-model", tmp=tmp)  # test only: the tokenizer is written, the weights not yet
        build_tiny_llama(tmp, tmp, model_cfg)
        publish_dir(tmp, final, _tiny_complete)  # a concurrent run may already read its twin
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


def local_base_or_hub_id(name_or_path: str) -> str:
    """A saved local base (e.g. ``work/models/base-gpu-...`` from bench/base_model/pretrain.py) as an absolute
    path, checked before any work: a missing one fails here, naming the script that builds it, instead of as a
    hub lookup of a repository called 'work/models/...'. Anything that is not a path is a hub id."""
    path = Path(name_or_path).expanduser()
    looks_local = path.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model.name_or_path {name_or_path!r} is a directory without config.json: "
                                    f"not a saved transformers model")
        return str(path.resolve())
    if looks_local:
        raise FileNotFoundError(f"model.name_or_path {name_or_path!r}: no such directory. A pretrained base is "
                                f"built by `python bench/base_model/pretrain.py` (see BENCHMARKS.md, Base model)")
    return name_or_path


@task(name="prepare-base-model", **IO_RETRIES)
def prepare_base_model_task(cfg: PipelineConfig, corpus: StageOutput) -> str:
    """Prefect wrapper: the tokenizer of the tiny model learns from the training split only (of a preference
    stage: the records behind its training pairs)."""
    corpus_dir = next((corpus.data(sub) for sub in ("train_records", "train") if corpus.data(sub).is_dir()),
                      corpus.data())
    return prepare_base_model(cfg.model, Path(cfg.workdir), corpus_dir)


def quantization_config(adapter_cfg: AdapterConfig, compute_dtype: torch.dtype, sharded: bool = False):
    """QLoRA's NF4 weights, optionally double-quantized, computing in ``compute_dtype``. ``sharded`` (FSDP):
    the packed 4-bit bytes are stored as ``compute_dtype`` tensors instead of uint8, since FSDP shards only
    floating-point tensors (bitsandbytes' FSDP-QLoRA recipe)."""
    from transformers import BitsAndBytesConfig

    extra = {"bnb_4bit_quant_storage": compute_dtype} if sharded else {}
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=adapter_cfg.double_quant,
                              bnb_4bit_compute_dtype=compute_dtype, **extra)


def load_base_model(model_cfg: ModelConfig, adapter_cfg: AdapterConfig, device: torch.device | str,
                    base: str | None = None, sharded: bool = False) -> PreTrainedModel:
    """Load the base causal LM onto ``device``: bf16 on CUDA, fp32 on CPU, NF4 weights for QLoRA.

    ``sharded`` (``train.parallel: fsdp``): a LoRA base is loaded into host memory, and FSDP moves each decoder
    layer's shard to the GPU as it shards it, so no GPU ever holds the whole model. A QLoRA base is quantized
    on the GPU (bitsandbytes quantizes as weights move there), in 4 bits stored as the compute dtype.

    No ``prepare_model_for_kbit_training``: its blanket fp32 upcast made QLoRA 2.5x slower and twice as big on
    an H200 (ANCHORS.md); the lean path keeps every weight in the compute dtype.
    """
    from transformers import AutoModelForCausalLM

    device = torch.device(device)
    dtype = resolve_dtype(model_cfg, device)
    place = torch.device("cpu") if sharded and adapter_cfg.method == "lora" else device
    kwargs: dict = dict(revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code, dtype=dtype,
                        device_map={"": place})
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    elif device.type == "cuda":
        kwargs["attn_implementation"] = "sdpa"
    if adapter_cfg.method == "qlora":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise ImportError("QLoRA needs bitsandbytes: pip install bitsandbytes") from exc
        kwargs["quantization_config"] = quantization_config(adapter_cfg, dtype, sharded)
    model = AutoModelForCausalLM.from_pretrained(base or model_cfg.name_or_path, **kwargs)
    model.config.use_cache = False  # a KV cache is useless in training and clashes with checkpointing
    return model


def load_base_tokenizer(base: str, model_cfg: ModelConfig, chat_template: str | None = None):
    """The tokenizer saved beside the base model, with a pad token and a chat template."""
    from tasks.tokenize.tokenizer import load_tokenizer

    return load_tokenizer(base, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code,
                          chat_template=chat_template)


def lora_config(adapter_cfg: AdapterConfig):
    from peft import LoraConfig

    return LoraConfig(r=adapter_cfg.r, lora_alpha=adapter_cfg.alpha, lora_dropout=adapter_cfg.dropout,
                      target_modules=adapter_cfg.target_modules, use_rslora=adapter_cfg.use_rslora,
                      use_dora=adapter_cfg.use_dora, modules_to_save=adapter_cfg.modules_to_save or None,
                      init_lora_weights="gaussian" if adapter_cfg.init == "gaussian" else True,
                      task_type="CAUSAL_LM")


def add_adapter(model: PreTrainedModel, adapter_cfg: AdapterConfig):
    """Wrap the base in a trainable LoRA PeftModel; only the adapter (and modules_to_save) requires grad."""
    from peft import get_peft_model

    base_path = getattr(model, "name_or_path", "")
    peft_model = get_peft_model(model, lora_config(adapter_cfg),
                                autocast_adapter_dtype=adapter_cfg.adapter_dtype == "float32")
    if adapter_cfg.init == "loftq":
        loftq_init(peft_model, base_path)
    return peft_model


def loftq_init(peft_model, base_path: str) -> None:
    """LoftQ on an NF4 model: each LoRA pair becomes the rank-r SVD of (original weight - dequantized weight).

    peft's ``replace_lora_weights_loftq`` reads the original weights from the base's safetensors, so the base must
    be a local directory (a saved model such as bench/base_model's). The base weights stay the plain NF4 rounding
    of the original, so the saved adapter loads onto a freshly quantized base like any QLoRA adapter.
    """
    from peft import replace_lora_weights_loftq

    if not (Path(base_path) / "model.safetensors").is_file() and \
            not (Path(base_path) / "model.safetensors.index.json").is_file():
        raise ValueError(f"adapter.init 'loftq' reads the unquantized weights from a local safetensors checkpoint; "
                         f"{base_path!r} has none")
    replace_lora_weights_loftq(peft_model, model_path=str(base_path))


def enable_checkpointing(model, layers: list[int] | None = None) -> int:
    """Non-reentrant activation checkpointing on the decoder layers in ``layers`` (all when None).

    Returns how many layers recompute. Non-reentrant checkpointing needs no ``enable_input_require_grads``:
    gradients reach the LoRA weights inside a checkpointed layer even when its input needs no grad.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x renamed it
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    decoder_layers = [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer)]
    wanted = set(range(len(decoder_layers))) if layers is None else {i % len(decoder_layers) for i in layers}
    for i, layer in enumerate(decoder_layers):
        layer.gradient_checkpointing = i in wanted
    return len(wanted)


def compile_layers(model, backend: str = "inductor") -> int:
    """Compile each decoder layer in place; identical layers share the compiled code, so it compiles once.
    ``backend`` is torch.compile's: the CPU tests use "aot_eager" (the same graph capture and autograd, without
    inductor's C++ build, which takes minutes on a 2-core machine)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layers = [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer)]
    # Variants are legitimately several (first layer's input needs no grad, eval runs without grad, a few
    # widths): raise the recompile limit so none of them falls back to eager.
    conf = torch._dynamo.config
    name = "recompile_limit" if hasattr(conf, "recompile_limit") else "cache_size_limit"
    setattr(conf, name, max(getattr(conf, name), 64))
    for layer in layers:
        layer.compile(backend=backend)
    return len(layers)


SMALL_MODEL_WEIGHTS = 50_000_000


def set_cpu_threads(model, device: torch.device, requested: int | None = None) -> None:
    """On CPU: ``requested`` intra-op threads, else 1 for small models. Their tiny matmuls gain nothing from
    threads, and OpenMP's spin-waiting made each step 20x slower on a loaded 2-core machine."""
    if device.type != "cpu":
        return
    if requested:
        torch.set_num_threads(requested)
    elif count_matmul_params(model) < SMALL_MODEL_WEIGHTS:
        torch.set_num_threads(1)


def count_matmul_params(model) -> int:
    """Parameters that take part in a matmul per token (all but the embeddings), for the FLOPs estimate."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    n = 0
    for name, module in base.named_modules():
        if isinstance(module, torch.nn.Linear) and "lora_" not in name:
            n += module.in_features * module.out_features
    return n


def export_merged(base: str, adapter_dir: Path, cfg: PipelineConfig, out_dir: Path) -> Path:
    """The base with the adapter merged in, as bf16 safetensors. For QLoRA the adapter is merged into an
    unquantized copy of the base (merging into NF4 weights would round the update away)."""
    from peft import PeftModel

    unquantized = cfg.adapter.model_copy(update={"method": "lora"})
    model_cfg = cfg.model.model_copy(update={"dtype": "bfloat16"})
    model = load_base_model(model_cfg, unquantized, "cpu", base=base)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    tmp = Path(out_dir).parent / f".{Path(out_dir).name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    load_base_tokenizer(base, cfg.model, cfg.tokenize.chat_template).save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return Path(out_dir)
