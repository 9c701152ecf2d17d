"""Real chat templates as shipped with the models (``templates/*.jinja``), and small offline tokenizers for them.

Each family's tokenizer is a byte-level BPE (or, for a second pass, a SentencePiece-style Unigram) trained
here on a tiny corpus, with the family's special tokens
added exactly as the model's tokenizer has them, its bos/eos, and the template file as its chat template: the
rendered text is the model's, the token ids are not (no hub at test time).

Origins (repository, path, commit). TRL keeps byte-identical copies of the hub templates for identity
comparison; llama.cpp's ``models/templates`` are written by its ``scripts/get_chat_template.py`` from the
hub; the Phi-4 string is quoted from the model's ``tokenizer_config.json`` in BFCL's handler.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

TEMPLATES = Path(__file__).parent / "templates"
TRL = "huggingface/trl"


@dataclass(frozen=True)
class Family:
    name: str
    origin: tuple[str, str, str]  # repository, path, commit
    model: str  # the hub model that ships this template
    bos: str | None
    eos: str
    special: tuple[str, ...]  # special tokens besides bos/eos
    added: tuple[str, ...] = ()  # added, non-special tokens (Qwen3's and R1's <think> tags)
    trims: bool = False  # renders replies with `| trim`
    system: str = "kept"  # "kept" | "raises" | "dropped"
    reasoning: str = "none"  # "none": <think> is text; "field": reads reasoning_content; "dropped": never renders it
    final_eot: bool = True  # emits an end-of-turn token after the last reply
    final_think: str = ""  # what the template writes before the last reply when it has no reasoning
    eot: str = ""
    markup_words: tuple[str, ...] = field(default=())  # words of the template's own markup


FAMILIES = [
    Family("llama3", (TRL, "trl/chat_templates/llama3.jinja", "dbd3faca46540fd6f777cce2c82688821d5ecc60"),
           "meta-llama/Meta-Llama-3-8B-Instruct", "<|begin_of_text|>", "<|eot_id|>",
           ("<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"), trims=True, eot="<|eot_id|>",
           markup_words=("assistant", "user", "system", "start_header_id", "eot_id", "|", "\n")),
    Family("llama3_2", (TRL, "trl/chat_templates/llama3_2.jinja", "abe20a8c5edaa0e01c515092281c1b23c07a202c"),
           "meta-llama/Llama-3.2-3B-Instruct", "<|begin_of_text|>", "<|eot_id|>",
           ("<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>", "<|eom_id|>", "<|python_tag|>"),
           trims=True, eot="<|eot_id|>",
           markup_words=("Cutting", "Knowledge", "Date", "December", "2023", "Today", "assistant", "2024")),
    Family("qwen2_5", (TRL, "trl/chat_templates/qwen2_5.jinja", "d6d5efcefcbfa8d6d0841cc921d23d094d97bc52"),
           "Qwen/Qwen2.5-7B-Instruct", None, "<|im_end|>", ("<|im_start|>", "<|endoftext|>"), eot="<|im_end|>",
           markup_words=("Qwen", "Alibaba", "Cloud", "helpful", "assistant", "You are", "im_start")),
    Family("qwen3", (TRL, "trl/chat_templates/qwen3.jinja", "f44cf20bd8c9e43954c7e2f72b01e8070fbc38d1"),
           "Qwen/Qwen3-8B", None, "<|im_end|>", ("<|im_start|>", "<|endoftext|>"), added=("<think>", "</think>"),
           reasoning="field", eot="<|im_end|>", final_think="<think>\n\n</think>\n\n", markup_words=("assistant", "think", "user", "\n\n")),
    Family("mistral_nemo", ("ye-NX/llama.cpp", "models/templates/mistralai-Mistral-Nemo-Instruct-2407.jinja",
                            "b354d7c9ecb76c97c07098617cdebbdfffa2583e"),
           "mistralai/Mistral-Nemo-Instruct-2407", "<s>", "</s>", ("[INST]", "[/INST]"), system="dropped",
           eot="</s>", markup_words=("INST", "/", "s", "[", "]")),
    Family("gemma", (TRL, "trl/chat_templates/gemma.jinja", "32569957059f8ac64b03d6d7544b72df829f3b57"),
           "google/gemma-2-2b-it", "<bos>", "<eos>", ("<start_of_turn>", "<end_of_turn>"), trims=True,
           system="raises", eot="<end_of_turn>", markup_words=("model", "user", "start_of_turn", "\n")),
    Family("gemma3", (TRL, "trl/chat_templates/gemma3.jinja", "909d0c16bba33cac5bccdb2e7d587bae07321ef7"),
           "google/gemma-3-4b-it", "<bos>", "<eos>", ("<start_of_turn>", "<end_of_turn>", "<start_of_image>"),
           trims=True, eot="<end_of_turn>", markup_words=("model", "user", "\n\n")),
    Family("phi3", (TRL, "trl/chat_templates/phi3.jinja", "644d173850c625974b07739c1d2ea816183a5dd2"),
           "microsoft/Phi-3-mini-4k-instruct", "<s>", "<|endoftext|>",
           ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"), eot="<|end|>",
           markup_words=("assistant", "end", "user", "|")),
    Family("phi4", ("ShishirPatil/gorilla",
                    "berkeley-function-call-leaderboard/bfcl/model_handler/local_inference/phi.py",
                    "32b96c4bd301c11e57a8b0df29197cb18b90aabf"),
           "microsoft/phi-4", None, "<|im_end|>", ("<|im_start|>", "<|im_sep|>", "<|endoftext|>"),
           eot="<|im_end|>", markup_words=("assistant", "im_sep", "user")),
    Family("deepseek_r1", ("acproject/seq2seq_llama.cpp",
                           "models/templates/deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja",
                           "6626e786afc71be2514e584ca545834293d6e93d"),
           "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
           ("<｜User｜>", "<｜Assistant｜>"), added=("<think>", "</think>"), reasoning="dropped",
           eot="<｜end▁of▁sentence｜>", markup_words=("Assistant", "User", "｜", "think")),
    Family("chatml", ("vllm-project/vllm", "examples/template_chatml.jinja",
                      "140af95ffb5158836c3c39879763c35e65f61a33"),
           "ChatML (vLLM's example template)", None, "<|im_end|>", ("<|im_start|>",), final_eot=False,
           eot="<|im_end|>", markup_words=("assistant", "im_end", "user", "\n")),
]
BY_NAME = {f.name: f for f in FAMILIES}

CORPUS = ("the model learns to answer questions about data pipelines and adapters while the user asks short "
          "and long questions assistant user system model end A B C D yes no 🙂 ünïcode 日本語 مرحبا").split()


@cache
def _base(kind: str) -> str:
    """A byte-level BPE (GPT-2/Llama-3/Qwen style) or a SentencePiece-style Unigram with Metaspace (Gemma,
    Mistral, Llama-2 style), trained on the tiny corpus, as JSON."""
    import numpy as np
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(CORPUS, 25)) + " <think>\n\n</think>\n 2+2? It is 4. Pick: [or] ,.!" for _ in range(300)]
    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(vocab_size=500, min_frequency=2, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<unk>"], unk_token="<unk>",
                                          show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok.to_str()


@cache
def family_tokenizer(name: str, kind: str = "bpe"):
    """A fast tokenizer with ``name``'s special tokens and shipped chat template; ``kind`` "bpe" (byte-level)
    or "unigram" (SentencePiece-style Metaspace)."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    fam = BY_NAME[name]
    bpe = Tokenizer.from_str(_base(kind))
    specials = [t for t in (fam.bos, fam.eos, *fam.special) if t]
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if fam.added:
        bpe.add_tokens([AddedToken(t, special=False, normalized=False) for t in fam.added])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=fam.bos, eos_token=fam.eos, pad_token=fam.eos,
                                  unk_token="<unk>" if kind == "unigram" else None,
                                  clean_up_tokenization_spaces=False)
    tok.chat_template = (TEMPLATES / f"{name}.jinja").read_text()
    tok.name_or_path = fam.model
    return tok
