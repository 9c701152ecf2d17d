"""The stage's side of the masks: verification rejects, the per-template report, the cap on template rejects,
a batch without any loss token, and ``peftpipe masks``."""
from __future__ import annotations

import pyarrow as pa
import pytest
from families import family_tokenizer

from schemas.record import RECORD_SCHEMA
from schemas.tokenize import TokenizeConfig
from tasks.core.stage import ShardWriter, read_table
from tasks.tokenize.chat import EmptyMasksError, encode_records
from tasks.tokenize.report import TemplateRejectError
from tasks.tokenize.stage import tokenize_splits


def chat(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in turns]


def write_split(root, train: list[list[dict]], ev: list[list[dict]]):
    for name, convs in (("train", train), ("eval", ev)):
        rows = [{"id": f"{name}{i}", "source": "s", "messages": c, "annotations": [], "meta": "{}"}
                for i, c in enumerate(convs)]
        with ShardWriter(root / name, RECORD_SCHEMA) as w:
            w.write(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA))
    return root


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("mistral") / "tok"
    family_tokenizer("mistral_nemo").save_pretrained(path)
    return path


PLAIN = [chat(("user", f"question {i}"), ("assistant", f"answer {i}")) for i in range(18)]
WITH_SYSTEM = [chat(("system", "Be brief."), ("user", f"q {i}"), ("assistant", f"a {i}")) for i in range(2)]


def test_template_rejects_over_the_share_fail_naming_behaviour_and_key(mistral_dir, tmp_path):
    # Mistral Nemo's template renders the system prompt only before a final user turn: 2 of 20 records lose it.
    split = write_split(tmp_path / "split", PLAIN[:16] + WITH_SYSTEM, PLAIN[16:])
    with pytest.raises(TemplateRejectError) as err:
        tokenize_splits(split, str(mistral_dir), TokenizeConfig(max_seq_len=64), tmp_path / "out")
    msg = str(err.value)
    assert "2 of 20 records (10.0%)" in msg and "template_dropped_content" in msg
    assert "drops the text of a message" in msg and "tokenize.on_dropped_content=keep" in msg
    assert "tokenize.max_template_reject_share=0.05" in msg

    ledger = tokenize_splits(split, str(mistral_dir), TokenizeConfig(max_seq_len=64, max_template_reject_share=0.2),
                             tmp_path / "out2")
    ledger.check()
    assert ledger.dropped == {"template_dropped_content": 2} and ledger.kept == 18
    report = ledger.extra["template"]
    assert report["template"] == mistral_dir.name and len(report["template_sha256"]) == 12  # no workdir path
    assert report["rejected"] == {"template_dropped_content": 2} and report["rejected_share"] == 0.1
    assert "system" in report["first_detail"]["template_dropped_content"]
    rejects = read_table(tmp_path / "out2" / "rejects").to_pylist()
    assert sorted(r["id"] for r in rejects) == ["train16", "train17"]

    kept = tokenize_splits(split, str(mistral_dir), TokenizeConfig(max_seq_len=64, on_dropped_content="keep"),
                           tmp_path / "out3")
    assert kept.kept == 20 and not kept.dropped
    assert kept.extra["template"]["behaviours"] == {"system_dropped": 2}


def test_a_batch_without_any_loss_token_fails():
    tok = family_tokenizer("mistral_nemo")
    with pytest.raises(EmptyMasksError, match="no loss token to any of the 2 records.*template_dropped_content"):
        encode_records(tok, ["a", "b"], WITH_SYSTEM, TokenizeConfig())
    # the same records beside trainable ones are rejects, not a failure
    enc = encode_records(tok, ["a", "b", "c"], WITH_SYSTEM + PLAIN[:1], TokenizeConfig())
    assert [s.record_id for s in enc.seqs] == ["c"] and len(enc.rejects) == 2


def merging_tokenizer():
    """A BPE without a pre-tokenizer, as SentencePiece-style models have: merges cross the template's markup."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.decoder = decoders.ByteLevel()
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe.train_from_iterator(["User: hi\nBot:Yes\n"] * 50, trainers.BpeTrainer(
        vocab_size=300, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="\n")
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n"
                         "{% else %}Bot:{{ m['content'] }}\n{% endif %}{% endfor %}")
    return tok


def test_a_loss_token_across_the_markup_is_a_counted_mismatch():
    tok = merging_tokenizer()
    assert "t:Y" in "".join(t for t in tok.convert_ids_to_tokens(tok("User: hi\nBot:Yes\n")["input_ids"])
                            if ":" in t and "Y" in t)  # one token holds markup and reply
    enc = encode_records(tok, ["merged", "fine"], [chat(("user", "hi"), ("assistant", "Yes")),
                                                   chat(("user", "hi"), ("assistant", "zq"))],
                         TokenizeConfig(max_template_reject_share=1.0))
    reasons = {r.index: (r.reason, r.detail) for r in enc.rejects}
    assert reasons[0][0] == "mask_mismatch" and "reaches past the reply" in reasons[0][1] and "'t:' before" in reasons[0][1]
    assert [s.record_id for s in enc.seqs] == ["fine"]


def test_the_ledger_counts_mask_mismatches(tmp_path):
    merging_tokenizer().save_pretrained(tmp_path / "tok")
    split = write_split(tmp_path / "split", [chat(("user", "hi"), ("assistant", "Yes")),
                                             chat(("user", "hi"), ("assistant", "zq"))], [])
    ledger = tokenize_splits(split, str(tmp_path / "tok"), TokenizeConfig(max_template_reject_share=0.5),
                             tmp_path / "out")
    ledger.check()
    assert ledger.kept == 1 and ledger.dropped == {"mask_mismatch": 1}
    assert ledger.extra["template"]["rejected"] == {"mask_mismatch": 1}
    (rej,) = read_table(tmp_path / "out" / "rejects").to_pylist()
    assert rej["id"] == "train0" and rej["reject_reason"] == "mask_mismatch" and "reaches past" in rej["reject_detail"]


def test_peftpipe_masks_prints_loss_tokens(mistral_dir, tmp_path, capsys):
    from flows.cli import main

    data = write_split(tmp_path / "split", [chat(("user", "Pick A or B"), ("assistant", "A")), WITH_SYSTEM[0]], [])
    (tmp_path / "cfg.yaml").write_text(
        f"workdir: {tmp_path / 'work'}\ningest:\n  sources:\n    - name: s\n      path: x.jsonl\n"
        f"model:\n  name_or_path: {mistral_dir}\n")
    assert main(["masks", "--config", str(tmp_path / "cfg.yaml"), "--data", str(data / "train"),
                 "--records", "5", "--color", "never"]) == 0
    out = capsys.readouterr().out
    assert "[INST]Pick A or B[/INST][[A</s>]]" in out
    assert "train1: REJECTED template_dropped_content" in out
    assert "2 records, 1 rejected" in out
    assert main(["masks", "--config", str(tmp_path / "cfg.yaml"), "--data", str(data / "train"), "--records", "1",
                 "--tokens"]) == 0
    table = capsys.readouterr().out
    assert "'</s>'" in table and " * " in table


def test_the_stage_honours_message_weights(tmp_path):
    # Ingest keeps the ShareGPT/axolotl per-message weight (issue 15); weight 0 means no loss on that turn.
    tok_dir = tmp_path / "tok"
    family_tokenizer("llama3").save_pretrained(tok_dir)
    message = pa.struct([("role", pa.string()), ("content", pa.string()), ("weight", pa.float64())])
    schema = pa.schema([f if f.name != "messages" else pa.field("messages", pa.list_(message)) for f in RECORD_SCHEMA])
    conv = [{"role": "user", "content": "q1", "weight": None}, {"role": "assistant", "content": "skip me", "weight": 0.0},
            {"role": "user", "content": "q2", "weight": None}, {"role": "assistant", "content": "learn me", "weight": 1.0}]
    for name in ("train", "eval"):
        rows = [{"id": name, "source": "s", "messages": conv, "annotations": [], "meta": "{}"}]
        with ShardWriter(tmp_path / "split" / name, schema) as w:
            w.write(pa.Table.from_pylist(rows, schema=schema))
    tokenize_splits(tmp_path / "split", str(tok_dir), TokenizeConfig(max_seq_len=64), tmp_path / "out")
    (row,) = read_table(tmp_path / "out" / "train").to_pylist()
    loss = [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != -100]
    assert family_tokenizer("llama3").decode(loss) == "learn me<|eot_id|>"
