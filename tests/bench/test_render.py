"""BENCHMARKS.md's tables are what bench/render.py makes of the results JSON, so a figure exists once."""
import json
from pathlib import Path

import pytest

from bench import render

ROOT = Path(__file__).resolve().parents[2]


def test_benchmarks_md_is_rendered_from_the_json():
    # Fails on a hand edit of a rendered table, or a results file changed without `python bench/render.py`.
    assert render.main(["--check"]) == 0, "BENCHMARKS.md or README.md is stale: run `python bench/render.py`"


def test_readme_repeats_the_experiment_tables_from_the_json():
    # The README's curation-experiment tables are rendered too, not copied by hand.
    readme = (ROOT / "README.md").read_text()
    assert "<!-- render: experiment/results_gpu.json curation -->" in readme
    assert "<!-- render: experiment/results_gpu.json peft -->" in readme


def test_check_fails_on_a_hand_edited_figure_and_render_restores_it(tmp_path, capsys):
    text = (ROOT / "BENCHMARKS.md").read_text()
    assert "| 2 | 4 | 132,412 (1.87x) |" in text  # a row of the 2-GPU table
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(text.replace("| 2 | 4 | 132,412 (1.87x) |", "| 2 | 4 | 140,000 (1.98x) |"))
    assert render.main(["--check", "--doc", str(doc)]) == 1
    assert "+| 2 | 4 | 132,412 (1.87x) |" in capsys.readouterr().out  # the diff names the rendered row
    assert render.main(["--doc", str(doc)]) == 0
    assert doc.read_text() == text


FIXTURE_DDP = [
    {"gpus": 2, "micro_batch_per_gpu": 4, "train_loss": 2.123456, "eval_loss": 2.5, "tokens_per_s": 1900,
     "peak_gib_rank0": 10.25},
    {"gpus": 1, "micro_batch_per_gpu": 8, "train_loss": 2.1234549, "eval_loss": 2.500004, "tokens_per_s": 1000,
     "peak_gib_rank0": 19.96},
]


def _ingest(size: int, engine: str, cpu_s: float) -> dict:
    return {"input": {"bytes": size}, "results": [
        {"engine": engine, "seconds": 1234.5, "cpu_seconds": cpu_s, "mb_per_cpu_s": 6.0, "kept": 7000,
         "peak_rss_mib": 226.1, "peak_tree_rss_mib": 1601.5}]}


def test_a_small_fixture_renders_to_the_expected_markdown(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "ddp_results.json").write_text(json.dumps(FIXTURE_DDP))
    (tmp_path / "ingest").mkdir()
    (tmp_path / "ingest" / "results_2gb.json").write_text(json.dumps(_ingest(2_000_000_000, "big", 700.0)))
    (tmp_path / "ingest" / "results_100mb.json").write_text(json.dumps(_ingest(100_002_765, "small", 0.5)))
    doc = ("# Bench\n\nProse stays.\n\n<!-- render: train/ddp_results.json -->\n| stale |\n<!-- /render -->\n\n"
           "- a list item:\n\n  <!-- render: ingest/results_*.json -->\n  old\n  <!-- /render -->\n\nEnd.\n")
    assert render.render(doc, bench=tmp_path) == """\
# Bench

Prose stays.

<!-- render: train/ddp_results.json -->

| GPUs | micro-batch per GPU | tokens/s (all GPUs) | final train loss | eval loss | peak GiB (rank 0) |
|---|---|---|---|---|---|
| 1 | 8 | 1,000 | 2.12345 | 2.50000 | 20.0 |
| 2 | 4 | 1,900 (1.90x) | 2.12346 | 2.50000 | 10.3 |

<!-- /render -->

- a list item:

  <!-- render: ingest/results_*.json -->

  | input | engine | wall s | CPU s | MB per CPU-s | records per CPU-s | peak RSS, largest process | peak RSS, all processes |
  |---|---|---|---|---|---|---|---|
  | 100 MB | small | 1,235 | 0.5 | 6.0 | 14,000 | 226 MiB | 1,602 MiB |
  | 2.0 GB | big | 1,235 | 700.0 | 6.0 | 10 | 226 MiB | 1,602 MiB |

  <!-- /render -->

End.
"""


def test_numbers_round_half_up_as_first_typed():
    assert render.num(25.814999999999998, 2) == "25.82"  # a median stored as 25.815 in binary
    assert render.num(67398) == "67,398"
    assert render.ratio(0.8297) == "0.830"
    assert render.ratio(0.9995) == "0.9995"  # never a perfect-looking 1.000 for what is not 1
    assert render.ratio(1.0) == "1.000"
    assert render.pct(0.3369) == "33.7%"


def test_a_marker_without_a_table_function_or_file_is_an_error(tmp_path):
    with pytest.raises(KeyError, match="no table function for 'train/nope.json'"):
        render.render("<!-- render: train/nope.json -->\n<!-- /render -->\n", bench=tmp_path)
    with pytest.raises(FileNotFoundError, match="no file matches bench/train/ddp_results.json"):
        render.render("<!-- render: train/ddp_results.json -->\n<!-- /render -->\n", bench=tmp_path)


def test_an_unclosed_marker_is_an_error_not_a_swallowed_table(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "ddp_results.json").write_text(json.dumps(FIXTURE_DDP))
    with pytest.raises(ValueError, match="has no `<!-- /render -->`"):
        render.render("<!-- render: train/ddp_results.json -->\n| a |\n\n"
                      "<!-- render: train/ddp_results.json -->\n| b |\n<!-- /render -->\n", bench=tmp_path)
    with pytest.raises(ValueError, match="has no `<!-- /render -->`"):
        render.render("<!-- render: train/ddp_results.json -->\n| a |\n", bench=tmp_path)
