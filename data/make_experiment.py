"""Build the curation experiment's data: an annotated instruction set with verifiable answers and planted noise,
plus a clean held-out eval set that no noise, dedup or filter ever touches.

    python data/make_experiment.py --out work/experiment/data            # train.jsonl, eval.jsonl, manifest.json
    python data/make_experiment.py --out DIR --per-task 120 --eval-per-task 20   # the CPU-sized version

Seeded and deterministic: the same arguments write byte-identical files. Five task families whose answers can be
checked exactly and that a small model can learn: ``arithmetic`` (a + b), ``unit_conversion`` (powers of ten),
``extraction`` (a fact from a given text), ``list_format`` (a numbered list) and ``reverse`` (a list backwards).

What goes wrong in the training file, the way annotated data goes wrong (``meta.planted``; ``meta.wrong`` marks a
wrong answer, whatever else was planted):

- ``wrong_low``: a wrong answer that 2-5 annotators agree is bad (ratings 1-2): ``min_rating`` catches it.
- ``wrong_disputed``: a wrong answer the annotators disagree on (a 1 and a 5, mean >= 3): only
  ``max_rating_spread`` catches it.
- ``junk``: a reply that has nothing to do with the prompt (spam, chatter), flagged by a majority but rated
  3-4: only ``flagged_labels`` catches it.
- ``single``: one annotator, rated well, and wrong half the time (nobody checked it): only ``min_annotators``.
- ``exact_dup`` / ``near_dup``: copies (near: case, punctuation or a filler word changed) of earlier records,
  rated again by other annotators in the same way as their original. Junk is copied six times as often as the
  rest, as spam is in scraped data: dedup is what removes it when the flag filter is off.

Wrong answers are the slips a person makes: off by one or ten, a zero too many or too few, the other person's
fact, bullets instead of numbers, the list not reversed. Each family has its own wrong-answer rate (``WRONG``):
extraction 40%, so its accuracy shows what filtering buys. ``manifest.json`` counts every planted kind per family.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections import Counter
from pathlib import Path

SEED = 20261201
TASKS = ("arithmetic", "unit_conversion", "extraction", "list_format", "reverse")
# Share of each family's ordinary (multi-annotator, non-junk) records that carry a wrong answer.
WRONG = {"arithmetic": 0.25, "unit_conversion": 0.30, "extraction": 0.40, "list_format": 0.20, "reverse": 0.10}
DISPUTED_SHARE = 0.35   # of the wrong answers: annotators disagree (the rest: they agree it is bad)
JUNK_SHARE = 0.05       # of each family's records: unrelated junk, flagged by a majority
SINGLE_SHARE = 0.08     # of each family's records: one annotator
SINGLE_WRONG = 0.5      # of the single-annotator records: wrong
EXACT_DUP_SHARE = 0.08  # copies, as a share of the base records
NEAR_DUP_SHARE = 0.06
JUNK_COPY_WEIGHT = 6.0  # junk is this many times likelier to be copied than another record
ANNOTATORS = [f"ann{i:02d}" for i in range(1, 17)]

NAMES = ["Maria", "Omar", "Aiko", "Liam", "Fatima", "Noah", "Priya", "Lucas", "Chen", "Amara", "Ivan", "Sofia",
         "Kwame", "Elena", "Mateo", "Hana", "Tariq", "Greta", "Ravi", "Ines", "Pablo", "Yuki", "Nadia", "Felix"]
CITIES = ["Lyon", "Porto", "Krakow", "Tampere", "Bergen", "Graz", "Ghent", "Bologna", "Cork", "Brno", "Malmo",
          "Utrecht", "Seville", "Salzburg", "Aarhus", "Turin", "Leeds", "Basel", "Nantes", "Riga"]
PETS = ["cat", "dog", "parrot", "rabbit", "hamster", "turtle", "goldfish", "pony", "lizard", "ferret"]
WORDS = ["apple", "pear", "plum", "fig", "lemon", "mango", "cherry", "grape", "melon", "peach", "red", "blue",
         "green", "yellow", "purple", "orange", "lion", "tiger", "horse", "sheep", "goat", "eagle", "owl", "wolf",
         "chair", "table", "lamp", "door", "window", "spoon", "piano", "violin", "drum", "flute", "harp", "river",
         "hill", "forest", "lake", "island", "bread", "cheese", "butter", "honey", "salt", "rice"]
UNITS = [("kilometres", "metres", 1000), ("metres", "centimetres", 100), ("centimetres", "millimetres", 10),
         ("kilograms", "grams", 1000), ("litres", "millilitres", 1000), ("grams", "milligrams", 1000)]
JUNK = ["Click here to claim your free prize now!", "Buy cheap watches at our online store today.",
        "lol no idea, ask someone else", "Subscribe to my channel for more videos!!!",
        "This message was sent from my phone.", "Great weather today, going to the beach.",
        "Follow us for daily deals and coupons.", "asdf asdf test test"]
FLAGS = ["spam", "off_topic"]


# ---- the five families: (prompt, right answer, wrong answer) ----

def arithmetic(rng: random.Random, a: int, b: int) -> tuple[str, str, str]:
    q = rng.choice(["What is {a} + {b}?", "Compute {a} + {b}.", "Add {a} and {b}."]).format(a=a, b=b)
    slip = rng.choice([1, -1, 10, -10])
    return q, str(a + b), str(a + b + slip)


def unit_conversion(rng: random.Random, x: int, unit: int) -> tuple[str, str, str]:
    big, small, k = UNITS[unit]
    q = rng.choice(["Convert {x} {big} to {small}.", "How many {small} are in {x} {big}?",
                    "Express {x} {big} in {small}."]).format(x=x, big=big, small=small)
    wrong = x * k // 10 if rng.random() < 0.5 else x * k * 10  # a zero too few or too many
    return q, f"{x * k} {small}", f"{wrong} {small}"


def extraction(rng: random.Random) -> tuple[str, str, str]:
    people = rng.sample(NAMES, 3)
    if rng.random() < 0.5:
        facts = rng.sample(CITIES, 3)
        verb = rng.choice(["lives in", "moved to", "works in"])
        text = " ".join(f"{p} {verb} {c}." for p, c in zip(people, facts, strict=True))
        ask = rng.randrange(3)
        question = {"lives in": "Where does {p} live?", "moved to": "Where did {p} move to?",
                    "works in": "Where does {p} work?"}[verb].format(p=people[ask])
    else:
        facts = rng.sample(PETS, 3)
        text = " ".join(f"{p} has a {c}." for p, c in zip(people, facts, strict=True))
        ask = rng.randrange(3)
        question = f"What pet does {people[ask]} have?"
    q = rng.choice(["Text: {t}\nQuestion: {q}", "Read this: {t}\n{q}", "{t}\nAnswer from the text: {q}"]).format(
        t=text, q=question)
    other = rng.choice([i for i in range(3) if i != ask])
    return q, facts[ask], facts[other]


def list_format(rng: random.Random) -> tuple[str, str, str]:
    items = rng.sample(WORDS, rng.randint(3, 5))
    q = rng.choice(["Write these as a numbered list: {x}", "Format as a numbered list: {x}",
                    "Make a numbered list of: {x}"]).format(x=", ".join(items))
    return q, "\n".join(f"{i}. {w}" for i, w in enumerate(items, 1)), "\n".join(f"- {w}" for w in items)


def reverse(rng: random.Random) -> tuple[str, str, str]:
    items = rng.sample(WORDS, rng.randint(3, 5))
    q = rng.choice(["Reverse the order of this list: {x}", "Write this list backwards: {x}",
                    "List these in reverse order: {x}"]).format(x=", ".join(items))
    return q, ", ".join(reversed(items)), ", ".join(items)


def make_item(rng: random.Random, task: str, reserved: set, eval_side: bool) -> tuple[str, str, str]:
    """One item of ``task``. Arithmetic and unit operands are split between eval and train (``reserved`` holds the
    eval side's), so an eval question is never a train question in other words."""
    if task in ("arithmetic", "unit_conversion"):
        while True:
            key = (rng.randint(1, 49), rng.randint(1, 49)) if task == "arithmetic" else \
                (rng.randint(1, 99), rng.randrange(len(UNITS)))
            seen_as = tuple(sorted(key)) if task == "arithmetic" else key  # 3 + 10 is 10 + 3
            if eval_side:
                reserved.add(seen_as)
                break
            if seen_as not in reserved:
                break
        return (arithmetic if task == "arithmetic" else unit_conversion)(rng, *key)
    return {"extraction": extraction, "list_format": list_format, "reverse": reverse}[task](rng)


def solve(task: str, prompt: str) -> str:
    """The right answer to a prompt of ``task``, worked out from the prompt alone: what makes an answer verifiable
    (the tests check every clean record with it, and that every planted wrong answer fails it)."""
    import re

    if task == "arithmetic":
        a, b = map(int, re.search(r"(\d+) (?:\+|and) (\d+)", prompt).groups())
        return str(a + b)
    if task == "unit_conversion":
        x = int(re.search(r"\d+", prompt).group())
        big, small, k = next(u for u in UNITS if re.search(rf"\d+ {u[0]}\b", prompt) and u[1] in prompt)
        return f"{x * k} {small}"
    if task == "extraction":
        text, question = prompt.rsplit("\n", 1)
        facts = dict(re.findall(r"(\w+) (?:lives in|moved to|works in|has a) (\w+)\.", text))
        return facts[next(n for n in facts if re.search(rf"\b{n}\b", question))]
    items = [w.strip() for w in prompt.rsplit(":", 1)[1].split(",")]
    if task == "list_format":
        return "\n".join(f"{i}. {w}" for i, w in enumerate(items, 1))
    return ", ".join(reversed(items))


# ---- annotations ----

def annotations(rng: random.Random, kind: str) -> list[dict]:
    """Ratings (1-5) and labels that make a record clean or plant one annotation problem in it."""
    if kind == "single":
        return [{"annotator_id": rng.choice(ANNOTATORS), "rating": float(rng.choice([4, 5])), "labels": []}]
    n = rng.randint(3, 5) if kind in ("wrong_disputed", "junk") else rng.randint(2, 5)
    who = rng.sample(ANNOTATORS, n)
    labels: list[list[str]] = [[] for _ in who]
    if kind == "wrong_low":  # everyone agrees it is bad: ratings 1-2, spread <= 1
        ratings = [rng.choice([1, 2]) for _ in who]
    elif kind == "wrong_disputed":  # someone caught the error, someone else loved it: spread 4, mean >= 3
        ratings = [1, 5] + [rng.choice([4, 5]) for _ in range(n - 2)]
        rng.shuffle(ratings)
    elif kind == "junk":  # rated as inoffensive, but a strict majority flags it
        ratings = [rng.choice([3, 4]) for _ in who]
        flag = rng.choice(FLAGS)
        for i in rng.sample(range(n), n // 2 + 1):
            labels[i] = [flag]
    else:  # clean: 4-5 mostly, sometimes one 3 among 4s; mean >= 3.5, spread <= 1
        ratings = [rng.choice([4, 5]) for _ in who] if rng.random() < 0.85 else [3] + [4] * (n - 1)
    return [{"annotator_id": a, "rating": float(r), "labels": lab} for a, r, lab in zip(who, ratings, labels,
                                                                                         strict=True)]


def near_variant(rng: random.Random, prompt: str) -> str:
    """The prompt as another person would type it: case, punctuation, spacing or one filler word changed.
    Dedup's normalisation (case-folding, no punctuation) makes most of these identical to the original."""
    kind = rng.randrange(4)
    if kind == 0:
        return prompt.lower()
    if kind == 1:
        return prompt.rstrip(".?") + rng.choice(["", " ?", "!", " please."])
    if kind == 2:
        return prompt.replace(": ", ":  ", 1).replace(", ", " , ", 1) if ": " in prompt else prompt + " "
    return rng.choice(["Please, ", "Quick one: ", "Hi! "]) + prompt


def record(rid: str, task: str, prompt: str, answer: str, anns: list[dict], planted: str, wrong: bool,
           of: str | None = None) -> dict:
    meta = {"task": task, "topic": task, "planted": planted, "wrong": wrong}
    if of:
        meta["of"] = of
    return {"id": rid, "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            "annotations": anns, "meta": meta}


def build(per_task: int = 700, eval_per_task: int = 120, seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """The training records (noisy, in file order) and the clean eval items."""
    rng = random.Random(seed)
    reserved = {t: set() for t in TASKS}
    evals, seen = [], set()
    for task in TASKS:  # the eval side first, so train questions can avoid it
        n = 0
        while n < eval_per_task:
            q, right, _ = make_item(rng, task, reserved[task], eval_side=True)
            if q in seen:
                continue
            seen.add(q)
            n += 1
            evals.append({"id": f"e-{task}-{n:04d}", "prompt": q, "reference": right, "task": task})
    base: list[dict] = []
    for task in TASKS:
        n_junk, n_single = round(per_task * JUNK_SHARE), round(per_task * SINGLE_SHARE)
        n_ordinary = per_task - n_junk - n_single
        n_wrong = round(n_ordinary * WRONG[task])
        n_disputed = round(n_wrong * DISPUTED_SHARE)
        kinds = (["wrong_disputed"] * n_disputed + ["wrong_low"] * (n_wrong - n_disputed)
                 + ["clean"] * (n_ordinary - n_wrong) + ["junk"] * n_junk + ["single"] * n_single)
        single_wrong = set(rng.sample(range(n_single), round(n_single * SINGLE_WRONG)))
        i_single = 0
        for kind in kinds:
            while True:
                q, right, wrong_answer = make_item(rng, task, reserved[task], eval_side=False)
                if q not in seen:  # no train question repeats another or an eval question (copies come later)
                    seen.add(q)
                    break
            wrong = kind.startswith("wrong") or (kind == "single" and i_single in single_wrong)
            i_single += kind == "single"
            answer = rng.choice(JUNK) if kind == "junk" else wrong_answer if wrong else right
            base.append(record("", task, q, answer, annotations(rng, kind), kind, wrong))
    rng.shuffle(base)
    for i, r in enumerate(base):
        r["id"] = f"b-{i:05d}"

    weights = [JUNK_COPY_WEIGHT if r["meta"]["planted"] == "junk" else 1.0 for r in base]
    records = list(base)
    for planted, share in (("exact_dup", EXACT_DUP_SHARE), ("near_dup", NEAR_DUP_SHARE)):
        for j, src in enumerate(rng.choices(base, weights=weights, k=round(len(base) * share))):
            prompt, answer = src["messages"][0]["content"], src["messages"][1]["content"]
            if planted == "near_dup":
                prompt = near_variant(rng, prompt)
            anns = annotations(rng, src["meta"]["planted"] if src["meta"]["planted"] != "single" else "clean")
            copy = record(f"{planted[0]}-{j:05d}", src["meta"]["task"], prompt, answer, anns, planted,
                          src["meta"]["wrong"], of=src["id"])
            copy["meta"]["of_planted"] = src["meta"]["planted"]
            at = records.index(src)
            records.insert(rng.randint(at + 1, len(records)), copy)  # always after its original
    return records, evals


def manifest(records: list[dict], evals: list[dict], args: dict) -> dict:
    """Counts of every planted kind per family, and the wrong-answer share each curation should leave."""
    per_task: dict[str, Counter] = {t: Counter() for t in TASKS}
    for r in records:
        m = r["meta"]
        per_task[m["task"]][m["planted"]] += 1
        per_task[m["task"]]["wrong"] += m["wrong"]
        per_task[m["task"]]["total"] += 1
    return {"seed": args["seed"], "per_task": args["per_task"], "eval_per_task": args["eval_per_task"],
            "train_records": len(records), "eval_items": len(evals),
            "planted": dict(Counter(r["meta"]["planted"] for r in records)),
            "wrong_share": round(sum(r["meta"]["wrong"] for r in records) / len(records), 4),
            "per_task_counts": {t: dict(c) for t, c in per_task.items()},
            "rates": {"wrong": WRONG, "disputed_share": DISPUTED_SHARE, "junk": JUNK_SHARE, "single": SINGLE_SHARE,
                      "single_wrong": SINGLE_WRONG, "exact_dup": EXACT_DUP_SHARE, "near_dup": NEAR_DUP_SHARE,
                      "junk_copy_weight": JUNK_COPY_WEIGHT}}


def write(out: Path, per_task: int = 700, eval_per_task: int = 120, seed: int = SEED) -> dict:
    """Write train.jsonl, eval.jsonl and manifest.json into ``out``; return the manifest (with file digests)."""
    records, evals = build(per_task, eval_per_task, seed)
    out.mkdir(parents=True, exist_ok=True)
    files = {"train.jsonl": records, "eval.jsonl": evals}
    info = manifest(records, evals, {"seed": seed, "per_task": per_task, "eval_per_task": eval_per_task})
    info["sha256"] = {}
    for name, rows in files.items():
        blob = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows)
        (out / name).write_bytes(blob)
        info["sha256"][name] = hashlib.sha256(blob).hexdigest()[:16]
    (out / "manifest.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("work/experiment/data"))
    ap.add_argument("--per-task", type=int, default=700, help="base records per family, before the copies")
    ap.add_argument("--eval-per-task", type=int, default=120, help="clean eval items per family")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    info = write(args.out, args.per_task, args.eval_per_task, args.seed)
    print(f"wrote {args.out}: {info['train_records']} train records ({info['wrong_share']:.1%} wrong answers), "
          f"{info['eval_items']} eval items; planted {info['planted']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
