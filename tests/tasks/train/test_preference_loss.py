"""The preference losses: hand-computed values, the fused log-prob path against the plain one, and sequence
log-probs from one batched forward pass against each sequence run alone."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tasks.train.preference_data import collate_sequences, shift
from tasks.train.preference_loss import dpo_loss, kto_kl, kto_loss, sequence_logps, token_logps

T = torch.tensor


def test_dpo_losses_by_hand():
    # log-ratios: chosen -10 - -11 = 1, rejected -12 - -11 = -1; delta 2; beta 0.1
    args = (T([-10.0]), T([-12.0]), T([-11.0]), T([-11.0]), 0.1)
    out = dpo_loss(*args, "sigmoid")
    assert out.losses.item() == pytest.approx(math.log1p(math.exp(-0.2)))
    assert (out.chosen_rewards.item(), out.rejected_rewards.item()) == pytest.approx((0.1, -0.1))
    assert dpo_loss(*args, "hinge").losses.item() == pytest.approx(0.8)
    # IPO: per-token log-ratios 1/2 - (-1/4) = 0.75; (0.75 - 1/(2*0.1))^2
    ipo = dpo_loss(*args, "ipo", chosen_tokens=T([2.0]), rejected_tokens=T([4.0]))
    assert ipo.losses.item() == pytest.approx((0.75 - 5.0) ** 2)
    with pytest.raises(ValueError):
        dpo_loss(*args, "nope")


def test_kto_loss_by_hand():
    policy, ref = T([-1.0, -2.0]), T([-1.5, -1.5])
    desirable = T([True, False])
    out = kto_loss(policy, ref, desirable, T(0.2), beta=0.1, desirable_weight=2.0)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert out.losses.tolist() == pytest.approx([2 * (1 - sig(0.1 * (0.5 - 0.2))), 1 - sig(0.1 * (0.2 + 0.5))])
    assert (out.chosen_rewards.tolist(), out.rejected_rewards.tolist()) == (pytest.approx([0.05]),
                                                                            pytest.approx([-0.05]))
    assert kto_kl(T([-3.0, -1.0]), T([-1.0, -1.0])).item() == 0.0  # a negative estimate is clamped to 0
    assert kto_kl(T([-1.0, -1.0]), T([-2.0, -1.5])).item() == pytest.approx(0.75)


def test_fused_token_logps_match_the_plain_head_values_and_gradients():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False).requires_grad_(False)
    hidden = torch.randn(37, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    weights = torch.randn(37)
    plain = token_logps(hidden, head, targets, fused=False)
    (g_plain,) = torch.autograd.grad((plain * weights).sum(), hidden)
    fused = token_logps(hidden, head, targets, fused=True, chunk=8)  # several chunks, a ragged last one
    (g_fused,) = torch.autograd.grad((fused * weights).sum(), hidden)
    assert torch.allclose(fused, plain, atol=1e-5) and torch.allclose(g_fused, g_plain, atol=1e-5)
    expected = F.log_softmax(head(hidden), -1).gather(1, targets[:, None]).squeeze(1)
    assert torch.allclose(plain, expected, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_lora():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, target_modules="all-linear",
                                                                init_lora_weights=False))
    return model.eval()


@pytest.mark.parametrize("layout", ["padded", "flat"])
@pytest.mark.parametrize("fused", [False, True])
def test_batched_sequence_logps_equal_each_sequence_alone(tiny_lora, layout, fused):
    rng = np.random.default_rng(0)
    seqs = []
    for n, prompt in ((9, 4), (5, 2), (12, 7)):
        ids = rng.integers(1, 64, n)
        labels = np.where(np.arange(n) >= prompt, ids, -100)
        seqs.append((ids, shift(labels)))
    b = collate_sequences(seqs, layout, pad_id=0, multiple=8)
    with torch.no_grad():
        sums, counts = sequence_logps(tiny_lora, b.input_ids, b.position_ids, b.targets, b.seq_index, b.n_seqs,
                                      fused, chunk=4)
        alone = []
        for ids, targets in seqs:
            logits = tiny_lora(input_ids=torch.from_numpy(ids)[None]).logits[0]
            keep = torch.from_numpy(targets) != -100
            lp = F.log_softmax(logits.float(), -1)[keep].gather(1, torch.from_numpy(targets)[keep][:, None])
            alone.append(lp.sum().item())
    assert sums.tolist() == pytest.approx(alone, abs=1e-4)
    assert counts.tolist() == [5, 3, 5]  # response tokens: n - prompt
    if layout == "padded":
        assert b.input_ids.shape == (3, 16) and (b.seq_index[0, 9:] == -1).all()
