"""Batched greedy generation on the tiny model: left padding changes no answer, the prompt ends in the chat
template's generation prompt, answers respect the length cap, and overlong prompts are listed, not cut."""
import pytest
import torch

from schemas.train import AdapterConfig, ModelConfig
from tasks.evaluate.generation import encode_prompts, generate_answers, left_pad, stop_token_ids
from tasks.tokenize.tokenizer import load_tokenizer, train_sample_tokenizer
from tasks.train.model import build_tiny_llama, load_base_model

TEXTS = [f"user asks about item {i}; the assistant lists {i % 5} colours and {i % 7} shapes" for i in range(200)]
PROMPTS = [[{"role": "user", "content": "Name a colour."}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "List 3 shapes and 2 colours "
                                                                                     "of item 12, one per line."}],
           [{"role": "user", "content": "item 4"}],
           [{"role": "user", "content": "What does the assistant list for item 77 and item 78, in order?"}]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("gen") / "base"
    train_sample_tokenizer(TEXTS, base, vocab_size=400)
    build_tiny_llama(base, base, ModelConfig())
    model = load_base_model(ModelConfig(), AdapterConfig(), "cpu", base=str(base)).eval()
    model.config.use_cache = True
    return model, load_tokenizer(str(base))


def test_prompts_end_with_the_generation_prompt(tiny):
    _, tok = tiny
    enc = encode_prompts(tok, PROMPTS, max_prompt_tokens=512)
    header = tok("<|start_header_id|>assistant<|end_header_id|>\n\n", add_special_tokens=False)["input_ids"]
    assert enc.kept == [0, 1, 2, 3] and not enc.too_long
    for ids in enc.ids:
        assert ids[-len(header):] == header and ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_batched_answers_equal_one_by_one(tiny):
    model, tok = tiny
    enc = encode_prompts(tok, PROMPTS, max_prompt_tokens=512)
    assert len({len(x) for x in enc.ids}) == len(enc.ids)  # different lengths: the batch is really padded
    alone = [generate_answers(model, tok, [ids], 10, 1, "cpu")[0] for ids in enc.ids]
    batched = generate_answers(model, tok, enc.ids, 10, 4, "cpu")
    assert batched == alone
    assert any(a for a in alone)  # a random model still says something, so the comparison means something


def test_right_padding_would_change_answers(tiny):
    """The control: the same batch padded on the right gives other first tokens, so the test above can fail."""
    model, tok = tiny
    enc = encode_prompts(tok, PROMPTS, max_prompt_tokens=512)
    width = max(len(x) for x in enc.ids)
    ids = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x in enc.ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in enc.ids])
    with torch.no_grad():
        right = model(input_ids=ids, attention_mask=mask).logits[:, -1].argmax(-1).tolist()
        left_ids, left_mask = left_pad(enc.ids, tok.pad_token_id, torch.device("cpu"))
        left = model(input_ids=left_ids, attention_mask=left_mask).logits[:, -1].argmax(-1).tolist()
    alone = []
    with torch.no_grad():
        for x in enc.ids:
            alone.append(int(model(input_ids=torch.tensor([x])).logits[0, -1].argmax()))
    assert left == alone and right != alone


def test_length_cap_and_overlong_prompts(tiny):
    model, tok = tiny
    enc = encode_prompts(tok, PROMPTS, max_prompt_tokens=14)
    assert enc.too_long and set(enc.kept) | set(enc.too_long) == {0, 1, 2, 3}
    assert all(len(ids) <= 14 for ids in enc.ids)
    answers = generate_answers(model, tok, enc.ids, 3, 8, "cpu")
    for a in answers:
        assert len(tok(a, add_special_tokens=False)["input_ids"]) <= 3 + 1  # re-encoding may split a token
    assert tok.eos_token_id in stop_token_ids(model, tok)
