"""Tokenizing pairs: labels only on the final response (by the SFT mask), both sides or neither."""
import numpy as np
import pyarrow as pa
import pytest

from schemas.preference import PAIR_SCHEMA
from schemas.tokenize import IGNORE_INDEX, TokenizeConfig
from tasks.core.stage import ShardWriter, read_table
from tasks.preference.tokenize import final_turn_labels, tokenize_preferences
from tasks.tokenize.tokenizer import train_sample_tokenizer


def test_final_turn_labels_keep_the_last_run_only():
    x = IGNORE_INDEX
    labels = np.array([x, 5, 6, x, x, 7, 8, 9, x])
    assert final_turn_labels(labels).tolist() == [x, x, x, x, x, 7, 8, 9, x]
    assert final_turn_labels(np.array([x, x])).tolist() == [x, x]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    train_sample_tokenizer(["What is two plus two? Four. Five. Hello there, how are you?"] * 20, root, vocab_size=300)
    return str(root)


def pair(pid, prompt, chosen, rejected):
    return {"pair_id": pid, "group": "g", "prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "chosen_id": pid + "c",
            "rejected_id": pid + "r", "chosen_rating": 5.0, "rejected_rating": 1.0, "margin": 4.0,
            "agreement": 1.0, "n_annotators": 2, "agreement_basis": "shared", "source": "t"}


def test_pairs_are_masked_to_the_final_response_and_rejected_together(tmp_path, tok_dir):
    multi = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "how are you?"},
             {"role": "user", "content": "What is two plus two?"}]
    rows = [pair("p1", multi, "Four.", "Five."),
            pair("p2", [{"role": "user", "content": "What is two plus two?"}], "Four.", "Five. " * 80)]
    with ShardWriter(tmp_path / "pref" / "train", PAIR_SCHEMA) as w:
        w.write(pa.Table.from_pylist(rows, schema=PAIR_SCHEMA))
    with ShardWriter(tmp_path / "pref" / "eval", PAIR_SCHEMA):
        pass
    cfg = TokenizeConfig(max_seq_len=64, train_on="all")  # train_on is forced to the response for preferences
    ledger = tokenize_preferences(tmp_path / "pref", tok_dir, cfg, "dpo", tmp_path / "tok")
    ledger.check()
    assert (ledger.n_in, ledger.kept, dict(ledger.dropped)) == (2, 1, {"rejected:too_long": 1})
    row = read_table(tmp_path / "tok" / "train").to_pylist()[0]
    from tasks.tokenize.tokenizer import load_tokenizer
    tok = load_tokenizer(tok_dir)
    for side, text in (("chosen", "Four."), ("rejected", "Five.")):
        ids, labels = np.array(row[f"{side}_input_ids"]), np.array(row[f"{side}_labels"])
        labelled = ids[labels != IGNORE_INDEX].tolist()
        assert tok.decode(labelled) == text + tok.eos_token  # the response and its end of turn, nothing else
        assert "how are you" in tok.decode(ids.tolist())  # the earlier assistant turn is context only
    assert row["num_tokens"] == len(row["chosen_input_ids"]) + len(row["rejected_input_ids"])
    rejects = read_table(tmp_path / "tok" / "rejects").to_pylist()
    assert [(r["pair_id"], r["reject_reason"], r["split"]) for r in rejects] == [("p2", "rejected:too_long", "train")]


def test_on_a_task_runner_the_rows_are_the_sequential_ones(tmp_path, tok_dir):
    """One task per input shard (here run in this process, in order and last to first): the same files."""
    import hashlib

    user = [{"role": "user", "content": "What is two plus two?"}]
    rows = [pair(f"p{i}", user, "Four. " * (1 + i % 3), "Five. " * (80 if i % 4 == 3 else 1)) for i in range(14)]
    for split, part in (("train", rows[:10]), ("eval", rows[10:])):
        with ShardWriter(tmp_path / "pref" / split, PAIR_SCHEMA, shard_rows=4) as w:  # several input shards
            w.write(pa.Table.from_pylist(part, schema=PAIR_SCHEMA))
    cfg = TokenizeConfig(max_seq_len=64, batch_size=3)  # several batches per shard

    def files(out):
        return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(out.rglob("*")) if p.is_file()}

    seq = tokenize_preferences(tmp_path / "pref", tok_dir, cfg, "dpo", tmp_path / "seq")
    assert seq.dropped and seq.kept
    for name, mapper in (("in-order", lambda fn, items: [fn(i) for i in items]),
                         ("reversed", lambda fn, items: [fn(i) for i in reversed(items)][::-1])):
        got = tokenize_preferences(tmp_path / "pref", tok_dir, cfg, "dpo", tmp_path / name, mapper=mapper)
        assert got.to_dict() == seq.to_dict(), name
        assert files(tmp_path / name) == files(tmp_path / "seq"), name
