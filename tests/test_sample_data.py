"""The bundled samples are what data/make_sample.py makes, byte for byte (the counts in data/README.md hold)."""
import importlib.util
import json
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_generator():
    spec = importlib.util.spec_from_file_location("make_sample", ROOT / "data/make_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_both_samples_regenerate_byte_identically():
    gen = load_generator()
    blob, _, _ = gen.make()
    assert blob == (ROOT / "data/sample.jsonl").read_bytes()  # the preference sample left it untouched
    pref, counts = gen.make_preference()
    assert pref == (ROOT / "data/preference_sample.jsonl").read_bytes()
    rows = [json.loads(line) for line in pref.splitlines()]
    prompts = Counter(r["meta"]["planted"] for r in {r["meta"]["prompt_id"]: r for r in rows}.values())
    assert prompts == gen.PREF_COUNTS and len(rows) == 645
