"""Build the bundled sample: ~1500 annotated chat records with planted problems, written to sample.jsonl.

Seeded and deterministic: ``python data/make_sample.py`` rewrites ``data/sample.jsonl`` byte-identically.
Every record says what was planted in it (``meta.planted``, and ``meta.of`` for copies), so tests of the
curation stages can count what each stage should drop. ``--check`` also verifies the near-duplicate
guarantees with exact word-5-gram Jaccard (see data/README.md).
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from collections import Counter
from pathlib import Path

SEED = 20261128
OUT = Path(__file__).resolve().parent / "sample.jsonl"
ANNOTATORS = [f"ann{i:02d}" for i in range(1, 13)]
FLAGS = ["spam", "toxic", "pii", "off_topic"]

# How many records of each planted kind; exact/near duplicates are ~5% / ~8% of the file.
COUNTS = {"clean": 1081, "exact_dup": 75, "near_dup": 120, "low_rating": 60, "low_agreement": 50,
          "flagged": 60, "few_annotators": 30}
# Words swapped or inserted to make a near-duplicate: a couple of small edits in a long response.
SWAPS = {"so": "therefore", "first": "initially", "then": "next", "each": "every", "the": "this",
         "is": "equals", "add": "sum", "total": "overall", "divide": "split", "and": "plus"}
FILLERS = ["simply", "just", "now", "carefully", "quickly", "indeed"]


# ---- Text generators: templated but varied; numbers and word banks keep unrelated records apart. ----

NAMES = ["Maria", "José", "Aiko", "Liam", "Fatima", "Noah", "Zoë", "Omar", "Priya", "Lucas", "Chen", "Amara",
         "Ivan", "Sofia", "Kwame", "Elena", "Mateo", "Hana", "Tariq", "Greta", "Ravi", "Ines", "Pablo", "Yuki"]
THINGS = ["apples", "marbles", "stickers", "pencils", "cookies", "stamps", "books", "coins", "shells", "cards"]
ITEMS = [("notebook", 2.5), ("pen", 1.2), ("backpack", 34.0), ("water bottle", 12.75), ("lamp", 19.9),
         ("mug", 6.4), ("scarf", 15.0), ("umbrella", 11.3), ("stapler", 7.85), ("calculator", 13.6),
         ("headphones", 42.0), ("candle", 4.75), ("plant pot", 9.2), ("towel", 8.6), ("phone case", 14.99)]
CITIES = ["Lyon", "Porto", "Krakow", "Tampere", "Bergen", "Graz", "Ghent", "Bologna", "Cork", "Brno", "Malmo",
          "Utrecht", "Seville", "Salzburg", "Aarhus", "Turin", "Leeds", "Basel", "Nantes", "Riga"]
RECIPES = {
    "pancakes": [("flour", 200, "g"), ("milk", 300, "ml"), ("eggs", 2, ""), ("sugar", 25, "g"),
                 ("butter", 30, "g"), ("baking powder", 8, "g")],
    "tomato soup": [("tomatoes", 800, "g"), ("onion", 1, ""), ("garlic cloves", 2, ""), ("stock", 500, "ml"),
                    ("olive oil", 30, "ml"), ("basil leaves", 10, "")],
    "banana bread": [("bananas", 3, ""), ("flour", 250, "g"), ("brown sugar", 120, "g"), ("eggs", 2, ""),
                     ("butter", 90, "g"), ("walnuts", 60, "g"), ("baking soda", 5, "g")],
    "lentil curry": [("red lentils", 300, "g"), ("coconut milk", 400, "ml"), ("onion", 2, ""),
                     ("curry paste", 45, "g"), ("spinach", 150, "g"), ("rice", 350, "g")],
    "fruit salad": [("strawberries", 250, "g"), ("kiwis", 3, ""), ("oranges", 2, ""), ("grapes", 200, "g"),
                    ("honey", 20, "ml"), ("mint leaves", 8, "")],
    "omelette": [("eggs", 3, ""), ("milk", 40, "ml"), ("cheese", 50, "g"), ("ham", 60, "g"),
                 ("chives", 5, "g"), ("butter", 10, "g")],
}
LISTS = {
    "fruits": ["apple", "banana", "cherry", "mango", "pear", "plum", "kiwi", "peach", "grape", "lemon", "fig",
               "apricot", "papaya", "lime", "guava"],
    "programming languages": ["Python", "Rust", "Go", "Java", "C", "Haskell", "Ruby", "Kotlin", "Swift",
                              "Julia", "Scala", "Elixir", "Lua", "Perl", "OCaml"],
    "musical instruments": ["piano", "violin", "cello", "flute", "trumpet", "guitar", "drums", "harp", "oboe",
                            "clarinet", "banjo", "ukulele", "saxophone", "accordion", "tuba"],
    "planets": ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"],
    "birds": ["robin", "sparrow", "eagle", "owl", "heron", "parrot", "penguin", "swan", "crow", "falcon",
              "pelican", "wren", "magpie", "kingfisher", "flamingo"],
    "colors": ["red", "blue", "green", "yellow", "purple", "orange", "teal", "magenta", "indigo", "crimson",
               "beige", "turquoise", "maroon", "olive", "violet"],
    "sports": ["tennis", "rugby", "cricket", "hockey", "volleyball", "rowing", "fencing", "archery", "judo",
               "cycling", "badminton", "handball", "surfing", "skiing", "golf"],
    "vegetables": ["carrot", "leek", "celery", "spinach", "kale", "pepper", "onion", "garlic", "radish",
                   "zucchini", "cabbage", "turnip", "beetroot", "pumpkin", "broccoli"],
}
DEFINITIONS = {
    "photosynthesis": "the process by which plants use sunlight, water and carbon dioxide to make glucose and "
                      "release oxygen",
    "a prime number": "a whole number greater than 1 whose only divisors are 1 and itself",
    "an algorithm": "a finite sequence of well-defined steps that solves a problem or computes a result",
    "inflation": "the general rise in prices over time, which lowers what a unit of money can buy",
    "a noun": "a word that names a person, place, thing or idea",
    "gravity": "the force by which masses attract one another, which keeps us on the ground",
    "a variable": "a named storage location in a program whose value can change while it runs",
    "an ecosystem": "a community of living organisms interacting with each other and their environment",
    "a synonym": "a word that means the same or nearly the same as another word",
    "evaporation": "the change of a liquid into a gas at its surface, usually when it is heated",
    "a budget": "a plan that sets out expected income and spending over a period of time",
    "democracy": "a system of government in which citizens choose their leaders by voting",
    "an atom": "the smallest unit of a chemical element, made of protons, neutrons and electrons",
    "a metaphor": "a figure of speech that describes something as if it were something else",
    "a fraction": "a number that represents a part of a whole, written as a numerator over a denominator",
    "erosion": "the gradual wearing away of rock or soil by wind, water or ice",
    "a compiler": "a program that translates source code into machine code before it runs",
    "a habitat": "the natural home or environment of an animal, plant or other organism",
    "an invoice": "a document a seller sends a buyer listing goods or services and the amount owed",
    "a database": "an organised collection of data that can be searched, updated and managed",
    "velocity": "the speed of something in a given direction",
    "a haiku": "a short Japanese poem of three lines with five, seven and five syllables",
    "recycling": "turning used materials into new products instead of throwing them away",
    "a peninsula": "a piece of land almost surrounded by water but connected to the mainland",
    "an adjective": "a word that describes or modifies a noun",
    "a vaccine": "a preparation that trains the immune system to recognise and fight a disease",
    "interest": "money paid for the use of borrowed money, usually a percentage of the amount",
    "a thermometer": "an instrument that measures temperature",
    "a volcano": "an opening in the earth's crust through which lava, ash and gases escape",
    "a spreadsheet": "a program that arranges data in rows and columns and can calculate with it",
}
CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Kenya": "Nairobi", "Peru": "Lima", "Canada": "Ottawa",
            "Norway": "Oslo", "Egypt": "Cairo", "Chile": "Santiago", "Poland": "Warsaw", "Ghana": "Accra",
            "Vietnam": "Hanoi", "Portugal": "Lisbon", "Austria": "Vienna", "Ireland": "Dublin",
            "Mexico": "Mexico City", "Thailand": "Bangkok", "Finland": "Helsinki", "Morocco": "Rabat",
            "Greece": "Athens", "Argentina": "Buenos Aires", "Hungary": "Budapest", "Nepal": "Kathmandu"}
ADJS = ["quiet", "bright", "old", "tiny", "busy", "green", "famous", "cold", "narrow", "wooden", "shiny", "empty"]
NOUNS = ["garden", "library", "river", "kitchen", "station", "market", "bridge", "museum", "harbour", "village"]
VERBS = ["painted", "visited", "cleaned", "photographed", "described", "repaired", "explored", "sketched"]
WHEN = ["on Monday", "last summer", "before breakfast", "after the storm", "every weekend", "in the evening",
        "at dawn", "during the holidays", "yesterday afternoon", "in early spring"]
SYSTEMS = ["You are a helpful assistant. Answer clearly and concisely.",
           "You are a patient math tutor who shows every step.",
           "You are a friendly assistant for a small online shop.",
           "Answer as briefly as possible while staying correct.",
           "You are a careful assistant that explains its reasoning."]


def num(x: float) -> str:
    return f"{x:g}" if abs(x - round(x)) > 1e-9 else str(int(round(x)))


def money(x: float) -> str:
    return f"${x:,.2f}"


def sentence(rng: random.Random) -> str:
    return f"{rng.choice(NAMES)} {rng.choice(VERBS)} the {rng.choice(ADJS)} {rng.choice(NOUNS)} {rng.choice(WHEN)}"


def gen_arithmetic(rng: random.Random) -> tuple[list[dict], str]:
    a, b = rng.randint(2, 999), rng.randint(2, 99)
    op = rng.choice("+-*/")
    if op == "/":
        a = a * b
    sym = {"+": "+", "-": "-", "*": "×", "/": "÷"}[op]
    result = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    q = rng.choice([f"What is {a} {sym} {b}?", f"Compute {a} {sym} {b}.", f"Calculate {a} {sym} {b} for me.",
                    f"Quick question: how much is {a} {sym} {b}?"])
    a_text = rng.choice([f"{a} {sym} {b} = {result}.", f"The answer is {result}, because {a} {sym} {b} = {result}.",
                         f"{a} {sym} {b} equals {result}."])
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a_text}], "arithmetic"


def gen_word_problem(rng: random.Random) -> tuple[list[dict], str]:
    n1, n2 = rng.sample(NAMES, 2)
    thing = rng.choice(THINGS)
    a, b = rng.randint(12, 90), rng.randint(2, 11)
    if rng.random() < 0.5:
        q = f"{n1} has {a} {thing} and gives {b} to {n2}. How many {thing} does {n1} have left?"
        ans = f"{n1} starts with {a} {thing} and gives away {b}, so {n1} has {a} - {b} = {a - b} {thing} left."
    else:
        q = f"{n1} buys {b} bags with {a} {thing} in each bag. How many {thing} is that in total?"
        ans = f"There are {b} bags of {a} {thing}, so the total is {b} × {a} = {a * b} {thing}."
    return [{"role": "user", "content": q}, {"role": "assistant", "content": ans}], "word_problem"


CONVERSIONS = [("kilometres", "miles", 0.621371), ("miles", "kilometres", 1.609344), ("kilograms", "pounds", 2.20462),
               ("litres", "US gallons", 0.264172), ("centimetres", "inches", 0.393701), ("metres", "feet", 3.28084),
               ("hours", "minutes", 60), ("grams", "ounces", 0.035274)]


def gen_conversion(rng: random.Random) -> tuple[list[dict], str]:
    if rng.random() < 0.25:
        c = rng.randint(-30, 45)
        f = c * 9 / 5 + 32
        q = rng.choice([f"Convert {c} °C to Fahrenheit.", f"What is {c} degrees Celsius in Fahrenheit?"])
        ans = f"Multiply by 9/5 and add 32: {c} × 9/5 + 32 = {f:.1f} °F."
    else:
        src, dst, k = rng.choice(CONVERSIONS)
        x = rng.choice([rng.randint(1, 500), round(rng.uniform(0.5, 99), 1)])
        q = rng.choice([f"Convert {num(x)} {src} to {dst}.", f"How many {dst} are in {num(x)} {src}?",
                        f"Please turn {num(x)} {src} into {dst}."])
        ans = f"One of the {src} is {num(k)} {dst}, so {num(x)} {src} is {num(x)} × {num(k)} ≈ {x * k:.2f} {dst}."
    return [{"role": "user", "content": q}, {"role": "assistant", "content": ans}], "unit_conversion"


def gen_definition(rng: random.Random) -> tuple[list[dict], str]:
    term = rng.choice(list(DEFINITIONS))
    style = rng.randrange(3)
    q = [f"Define {term}.", f"What is {term}?", f"Explain {term} in one sentence for a {rng.randint(8, 15)}-year-old."][style]
    body = DEFINITIONS[term]
    ans = [f"{term[0].upper() + term[1:]} is {body}.", f"In short, {term} is {body}.",
           f"Put simply, {term} is {body}. For example, {sentence(rng)} and learned about it."][style]
    return [{"role": "user", "content": q}, {"role": "assistant", "content": ans}], "definition"


def gen_capital(rng: random.Random) -> tuple[list[dict], str]:
    country = rng.choice(list(CAPITALS))
    q = rng.choice([f"What is the capital of {country}?", f"Which city is the capital of {country}?",
                    f"Name the capital city of {country}."])
    ans = rng.choice([f"The capital of {country} is {CAPITALS[country]}.",
                      f"{CAPITALS[country]} is the capital of {country}."])
    return [{"role": "user", "content": q}, {"role": "assistant", "content": ans}], "geography"


def gen_list(rng: random.Random) -> tuple[list[dict], str]:
    cat = rng.choice(list(LISTS))
    n = rng.randint(3, min(7, len(LISTS[cat])))
    picked = rng.sample(LISTS[cat], n)
    q = rng.choice([f"List {n} {cat}.", f"Name {n} {cat}, one per line.", f"Give me {n} examples of {cat}."])
    ans = f"Here are {n} {cat}:\n" + "\n".join(f"{i}. {w}" for i, w in enumerate(picked, 1))
    return [{"role": "user", "content": q}, {"role": "assistant", "content": ans}], "list"


def gen_rewrite(rng: random.Random) -> tuple[list[dict], str]:
    s = sentence(rng)
    task = rng.randrange(4)
    if task == 0:
        q, ans = f"Rewrite in uppercase: {s}.", s.upper() + "."
    elif task == 1:
        q, ans = f"Reverse the order of the words in: {s}", " ".join(reversed(s.split()))
    elif task == 2:
        words = s.split()
        q, ans = f"How many words are in this sentence? \"{s}.\"", f"The sentence has {len(words)} words."
    else:
        q = f"Sort these words alphabetically: {', '.join(s.split())}"
        ans = ", ".join(sorted(s.split(), key=str.lower))
    return [{"role": "user", "content": q}, {"role": "assistant", "content": ans}], "rewrite"


def gen_sequence(rng: random.Random) -> tuple[list[dict], str]:
    start, step, n = rng.randint(1, 60), rng.randint(2, 15), rng.randint(4, 6)
    seq = [start + i * step for i in range(n)]
    q = f"What number comes next: {', '.join(map(str, seq))}?"
    ans = f"Each number is {step} more than the one before, so the next number is {seq[-1]} + {step} = {seq[-1] + step}."
    return [{"role": "user", "content": q}, {"role": "assistant", "content": ans}], "sequence"


def gen_multi_turn(rng: random.Random) -> tuple[list[dict], str]:
    a, b, c = rng.randint(2, 40), rng.randint(2, 20), rng.randint(1, 50)
    return [{"role": "user", "content": f"What is {a} × {b}?"},
            {"role": "assistant", "content": f"{a} × {b} = {a * b}."},
            {"role": "user", "content": f"And if you then add {c}?"},
            {"role": "assistant", "content": f"{a * b} + {c} = {a * b + c}."}], "arithmetic_multi_turn"


def gen_stats(rng: random.Random) -> tuple[list[dict], str]:
    k = rng.randint(9, 15)
    xs = [rng.randint(10, 99) for _ in range(k)]
    who = rng.choice(["students in a quiz", "players in a game", "runners in a race", "days of sales",
                      "plants in an experiment"])
    s, srt = sum(xs), sorted(xs)
    med = srt[k // 2] if k % 2 else (srt[k // 2 - 1] + srt[k // 2]) / 2
    q = f"Here are the scores of {k} {who}: {', '.join(map(str, xs))}. Find the mean, the median and the range."
    ans = (f"First add all the scores: {' + '.join(map(str, xs))} = {s}. There are {k} scores, so the mean is "
           f"{s} / {k} ≈ {s / k:.2f}. To find the median, sort the scores: {', '.join(map(str, srt))}. "
           + (f"With {k} values the median is the middle one, {num(med)}. " if k % 2 else
              f"With {k} values the median is the average of the two middle ones, {num(med)}. ")
           + f"The range is the largest minus the smallest: {srt[-1]} - {srt[0]} = {srt[-1] - srt[0]}.")
    return [{"role": "user", "content": q}, {"role": "assistant", "content": ans}], "statistics"


def gen_recipe(rng: random.Random) -> tuple[list[dict], str]:
    dish = rng.choice(list(RECIPES))
    base, target = rng.choice([(2, 3), (2, 5), (4, 6), (4, 10), (3, 7), (6, 9), (4, 3), (6, 4), (2, 7), (5, 8)])
    extra = rng.sample([("salt", rng.randint(2, 9), "g"), ("pepper", rng.randint(1, 4), "g"),
                        ("water", rng.randint(50, 400), "ml"), ("lemon juice", rng.randint(5, 40), "ml")], 2)
    ings = [(n, a * rng.choice([1, 1, 1.5, 2]), u) for n, a, u in RECIPES[dish]] + extra
    rng.shuffle(ings)
    factor = target / base

    def amount(a: float, u: str) -> str:
        return f"{num(round(a, 1))} {u}".strip() if u else num(round(a, 1))
    q = (f"My {dish} recipe serves {base} people and uses " + ", ".join(f"{amount(a, u)} {n}" for n, a, u in ings)
         + f". How much of each do I need for {target} people?")
    lines = [f"- {n}: {amount(a, u)} × {num(round(factor, 3))} = {amount(a * factor, u)}" for n, a, u in ings]
    ans = (f"To go from {base} to {target} people, multiply every amount by {target} / {base} ≈ "
           f"{factor:.3f}.\n" + "\n".join(lines) +
           f"\nRound the amounts to what is practical; cooking times for {dish} usually stay about the same.")
    return [{"role": "user", "content": q}, {"role": "assistant", "content": ans}], "recipe_scaling"


def gen_invoice(rng: random.Random) -> tuple[list[dict], str]:
    who = rng.choice(NAMES)
    picked = rng.sample(ITEMS, rng.randint(4, 6))
    qty = [rng.randint(1, 9) for _ in picked]
    tax = rng.choice([5, 7, 8, 10, 12, 20])
    sub = sum(q * p for q, (_, p) in zip(qty, picked, strict=True))
    total = sub * (1 + tax / 100)
    paid = (int(total // 50) + 1) * 50
    q = (f"{who} buys " + ", ".join(f"{n} {item}{'s' if n > 1 else ''} at {money(p)} each"
                                    for n, (item, p) in zip(qty, picked, strict=True))
         + f". Sales tax is {tax}%. {who} pays with {money(paid)}. What is the total, and how much change?")
    lines = [f"- {item}: {n} × {money(p)} = {money(n * p)}" for n, (item, p) in zip(qty, picked, strict=True)]
    ans = ("First work out each line:\n" + "\n".join(lines) + f"\nThe subtotal is {money(sub)}. "
           f"Tax at {tax}% adds {money(sub * tax / 100)}, so the total is {money(total)}. "
           f"Paying with {money(paid)} gives {money(paid - total)} in change.")
    return [{"role": "user", "content": q}, {"role": "assistant", "content": ans}], "shopping"


def gen_trip(rng: random.Random) -> tuple[list[dict], str]:
    stops = rng.sample(CITIES, rng.randint(4, 6))
    legs = [(a, b, rng.randint(40, 480), rng.choice([60, 70, 80, 90, 100, 110]))
            for a, b in zip(stops, stops[1:], strict=False)]
    who = rng.choice(NAMES)
    q = (f"{who} drives " + ", then ".join(f"from {a} to {b} ({d} km at {v} km/h)" for a, b, d, v in legs)
         + ". How long does the whole trip take, and what is the average speed?")
    total_d = sum(d for _, _, d, _ in legs)
    total_t = sum(d / v for _, _, d, v in legs)
    lines = [f"- {a} to {b}: {d} / {v} = {d / v:.2f} h" for a, b, d, v in legs]
    ans = ("Time for each leg is distance divided by speed:\n" + "\n".join(lines) +
           f"\nThe total distance is {total_d} km and the total time is {total_t:.2f} hours, "
           f"about {int(total_t)} h {round((total_t % 1) * 60)} min. The average speed is "
           f"{total_d} / {total_t:.2f} ≈ {total_d / total_t:.1f} km/h.")
    return [{"role": "user", "content": q}, {"role": "assistant", "content": ans}], "travel_time"


def with_system(gen):
    """Wrap a generator so that some of its conversations start with a system message."""
    def wrapped(rng: random.Random) -> tuple[list[dict], str]:
        messages, topic = gen(rng)
        if rng.random() < 0.15:
            messages = [{"role": "system", "content": rng.choice(SYSTEMS)}] + messages
        return messages, topic
    wrapped.__name__ = gen.__name__
    return wrapped


GENERATORS = [with_system(g) for g in (gen_arithmetic, gen_word_problem, gen_conversion, gen_definition,
                                       gen_capital, gen_list, gen_rewrite, gen_sequence, gen_multi_turn,
                                       gen_stats, gen_recipe, gen_invoice, gen_trip)]
LONG_GENERATORS = [with_system(g) for g in (gen_stats, gen_recipe, gen_invoice, gen_trip)]


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def conversation_text(messages: list[dict]) -> str:
    return " ".join(m["content"] for m in messages)


def annotations(rng: random.Random, kind: str) -> list[dict]:
    """Ratings and labels that make a record clean or plant one annotation problem in it."""
    n = 1 if kind == "few_annotators" else rng.randint(2, 5)
    who = rng.sample(ANNOTATORS, n)
    if kind == "low_rating":  # everyone agrees it is bad: mean < 2.5, spread <= 1
        lo = rng.choice([1, 1, 2])
        ratings = [lo + (rng.random() < 0.3 and lo == 1) for _ in who]
    elif kind == "low_agreement":  # one loves it, one hates it: spread >= 3, mean >= 2.5
        n = max(n, 2)
        ratings = [1, 5] + [rng.choice([3, 4, 5]) for _ in range(n - 2)]
        rng.shuffle(ratings)
    else:  # clean ratings: all 4-5, or 3-4 with more 4s than 3s; mean >= 3.5 and spread <= 1
        if rng.random() < 0.85:
            ratings = [rng.choice([4, 5]) for _ in who]
        else:
            ratings = [4] * n
            ratings[0] = 3 if n >= 3 else 4
    who = (who + rng.sample([a for a in ANNOTATORS if a not in who], len(ratings) - len(who)))[:len(ratings)]
    labels: list[list[str]] = [[] for _ in ratings]
    if kind == "flagged":  # a strict majority flags it, though the ratings look fine
        flag = rng.choice(FLAGS)
        for i in rng.sample(range(len(labels)), len(labels) // 2 + 1):
            labels[i] = [flag]
    elif kind == "clean" and len(labels) >= 3 and rng.random() < 0.1:
        labels[rng.randrange(len(labels))] = [rng.choice(FLAGS)]  # a lone dissenter: not a majority
    return [{"annotator_id": a, "rating": r, "labels": lab} for a, r, lab in zip(who, ratings, labels, strict=True)]


def near_copy(rng: random.Random, messages: list[dict]) -> list[dict] | None:
    """A copy with one or two words changed or added in the last (long) response, Jaccard > 0.85."""
    original = shingles(conversation_text(messages))
    for _ in range(20):
        copy = [dict(m) for m in messages]
        words = copy[-1]["content"].split(" ")
        for _ in range(rng.choice([1, 2])):
            i = rng.randrange(len(words))
            if words[i] in SWAPS:
                words[i] = SWAPS[words[i]]
            else:
                words.insert(i, rng.choice(FILLERS))
        copy[-1]["content"] = " ".join(words)
        if copy != messages and jaccard(original, shingles(conversation_text(copy))) > 0.87:
            return copy
    return None


def build(rng: random.Random) -> list[dict]:
    """All well-formed records in file order, with ids assigned; copies come after their originals."""
    seen: set[str] = set()

    def fresh(generators: list) -> tuple[list[dict], str]:
        while True:
            gen = rng.choice(generators)
            messages, topic = gen(rng)
            key = conversation_text(messages)
            if key not in seen:
                seen.add(key)
                return messages, topic

    base = []
    for kind in ("clean", "low_rating", "low_agreement", "flagged", "few_annotators"):
        for i in range(COUNTS[kind]):
            # A third of the clean records are long, so near-duplicates have originals with room for edits.
            gens = LONG_GENERATORS if kind == "clean" and i % 3 == 0 else GENERATORS
            messages, topic = fresh(gens)
            base.append({"messages": messages, "annotations": annotations(rng, kind),
                         "meta": {"topic": topic, "planted": kind}})
    rng.shuffle(base)

    clean = [r for r in base if r["meta"]["planted"] == "clean"]
    long_clean = [r for r in clean if len(conversation_text(r["messages"]).split()) >= 110]
    near_sources = rng.sample(long_clean, COUNTS["near_dup"])
    taken = {id(r) for r in near_sources}
    exact_sources = rng.sample([r for r in clean if id(r) not in taken], COUNTS["exact_dup"])

    copies = []
    for src in exact_sources:
        copies.append((src, {"messages": [dict(m) for m in src["messages"]],
                             "annotations": annotations(rng, "clean"),
                             "meta": {"topic": src["meta"]["topic"], "planted": "exact_dup"}}))
    for src in near_sources:
        messages = near_copy(rng, src["messages"])
        if messages is None:
            raise RuntimeError("could not make a near-duplicate; lengthen the long generators")
        copies.append((src, {"messages": messages, "annotations": annotations(rng, "clean"),
                             "meta": {"topic": src["meta"]["topic"], "planted": "near_dup"}}))
    records = list(base)
    for src, copy in copies:  # insert each copy somewhere after its original
        at = next(i for i, r in enumerate(records) if r is src)
        records.insert(rng.randint(at + 1, len(records)), copy)
        copy["_of"] = src
    for i, r in enumerate(records, 1):
        r["id"] = f"s-{i:05d}"
    for r in records:
        if "_of" in r:
            r["meta"]["of"] = r.pop("_of")["id"]
    return records


def record_line(r: dict) -> bytes:
    ordered = {"id": r["id"], "messages": r["messages"], "annotations": r["annotations"], "meta": r["meta"]}
    return json.dumps(ordered, ensure_ascii=False).encode() + b"\n"


def malformed_lines(rng: random.Random, records: list[dict]) -> list[tuple[str, bytes]]:
    """Twelve broken lines, one per kind of damage ingest must quarantine (not crash on)."""
    ann = json.dumps(annotations(rng, "clean"))
    user = {"role": "user", "content": "What is 2 + 2?"}
    good_reply = {"role": "assistant", "content": "2 + 2 = 4."}

    def obj(i: int, **fields) -> bytes:
        row = {"id": f"m-{i:02d}", **fields}
        row.setdefault("annotations", json.loads(ann))
        row.setdefault("meta", {"topic": "arithmetic", "planted": "malformed"})
        return json.dumps(row).encode()

    return [
        ("invalid_json: truncated line", b'{"id": "m-01", "messages": [{"role": "user", "content": "What is'),
        ("invalid_json: single quotes", b"{'id': 'm-02', 'messages': []}"),
        ("not_an_object: a JSON list", b'["m-03", "What is 2 + 2?", "4"]'),
        ("missing_messages", obj(4)),
        ("empty_assistant_content", obj(5, messages=[user, {"role": "assistant", "content": ""}])),
        ("wrong_type: messages is a string", obj(6, messages="user: What is 2 + 2? assistant: 4")),
        ("invalid_utf8: bytes 0xff 0xfe in content",
         obj(7, messages=[user, {"role": "assistant", "content": "2 + 2 = XX."}]).replace(b"XX", b"\xff\xfe")),
        ("blank_line", b""),
        ("empty_messages: []", obj(9, messages=[])),
        ("bad_role: 'robot'", obj(10, messages=[user, {"role": "robot", "content": "4"}])),
        ("wrong_type: annotations is a string", obj(11, messages=[user, good_reply], annotations="great")),
        ("duplicate_id: reuses an earlier record's id",
         obj(12, messages=[{"role": "user", "content": "Name a prime number above 90."},
                           {"role": "assistant", "content": "97 is a prime number above 90."}])
         .replace(b'"m-12"', json.dumps(records[len(records) // 2]["id"]).encode())),
    ]


def make() -> tuple[bytes, list[dict], list[str]]:
    rng = random.Random(SEED)
    records = build(rng)
    lines = [record_line(r) for r in records]
    bad = malformed_lines(rng, records)
    # Spread the broken lines through the file (after the record whose id the duplicate reuses).
    slots = sorted(rng.sample(range(len(records) // 2 + 1, len(lines)), len(bad) - 3) +
                   rng.sample(range(1, len(records) // 2), 3))
    for (_, line), at in sorted(zip(bad, slots, strict=True), key=lambda p: -p[1]):
        lines.insert(at, line + b"\n")
    return b"".join(lines), records, [what for what, _ in bad]


def check(records: list[dict]) -> list[str]:
    """The sample's promises, measured: near-dups > 0.85 to their original, unrelated pairs < 0.8."""
    from datasketch import MinHash, MinHashLSH

    problems = []
    by_id = {r["id"]: r for r in records}
    sets = {r["id"]: shingles(conversation_text(r["messages"])) for r in records}
    for r in records:
        if r["meta"]["planted"] == "near_dup":
            j = jaccard(sets[r["id"]], sets[r["meta"]["of"]])
            if j <= 0.85:
                problems.append(f"{r['id']}: near-dup Jaccard {j:.3f} to {r['meta']['of']}")
    # Candidate pairs from a loose LSH (0.5), then exact Jaccard; copies and their originals are expected.
    lsh = MinHashLSH(threshold=0.5, num_perm=128)
    mhs = {}
    for rid, s in sets.items():
        m = MinHash(num_perm=128, seed=1)
        m.update_batch([" ".join(g).encode() for g in s])
        mhs[rid] = m
        lsh.insert(rid, m)
    root = {rid: r["meta"].get("of", rid) for rid, r in by_id.items()}
    for rid, m in mhs.items():
        for other in lsh.query(m):
            if other <= rid or root[other] == root[rid]:
                continue
            j = jaccard(sets[rid], sets[other])
            if j >= 0.8:
                problems.append(f"unplanned near-duplicates {rid} / {other}: Jaccard {j:.3f}")
    return problems


# ---- The preference sample: several rated responses per prompt, for DPO / KTO (data/README.md). ----

PREF_OUT = OUT.with_name("preference_sample.jsonl")
PREF_SEED = SEED + 20  # its own stream: sample.jsonl stays byte-identical
# Short-answer generators only: responses to one prompt must stay far from near-duplicates of each other.
PREF_GENERATORS = [with_system(g) for g in (gen_arithmetic, gen_word_problem, gen_conversion, gen_definition,
                                            gen_capital, gen_list, gen_sequence, gen_rewrite)]
# How many prompts of each planted kind (see data/README.md for what the preference stage should make of them).
PREF_COUNTS = {"clear": 150, "three_way": 40, "tie": 20, "low_margin": 20, "disagree": 20, "single": 15,
               "cross": 15, "many": 15}
HEDGES = ["Hmm, I am not sure about this one. Maybe try asking someone else?",
          "I think the answer is {wrong}, but I did not check it.",
          "That is a hard one. I would rather not guess.",
          "Probably {wrong}? I am only guessing here.",
          "I do not really know, sorry. It could be {wrong}."]
WRONG = ["42", "seven", "about 13", "the blue one", "Tuesday", "1,000", "none of them", "-3"]
POLITE = ["Sure. {good}", "{good} Hope that helps!", "Of course! {good}", "Good question. {good}"]


def bad_response(rng: random.Random) -> str:
    return rng.choice(HEDGES).format(wrong=rng.choice(WRONG))


def rate(rng: random.Random, who: list[str], lo: int, hi: int) -> list[dict]:
    return [{"annotator_id": a, "rating": rng.randint(lo, hi), "labels": []} for a in who]


def fixed(who: list[str], ratings: list[int]) -> list[dict]:
    return [{"annotator_id": a, "rating": r, "labels": []} for a, r in zip(who, ratings, strict=True)]


def preference_group(rng: random.Random, kind: str, messages: list[dict]) -> list[tuple[str, str, list[dict]]]:
    """(quality, response, annotations) of each response to one prompt of a planted kind."""
    good = messages[-1]["content"]
    who = rng.sample(ANNOTATORS, 3)
    polite = rng.choice(POLITE).format(good=good)
    if kind == "clear":  # a good answer against a hedge, well apart and agreed on
        return [("good", good, rate(rng, who, 4, 5)), ("bad", bad_response(rng), rate(rng, who, 1, 2))]
    if kind == "three_way":  # good, so-so, bad: three candidate pairs, the so-so one beats the hedge
        return [("good", good, fixed(who, [5, 5, 4])), ("mid", polite + " (I might be wrong.)", fixed(who, [3, 3, 3])),
                ("bad", bad_response(rng), rate(rng, who, 1, 2))]
    if kind == "tie":  # two good answers with the same mean: a tie, nothing to prefer
        return [("good", good, fixed(who, [5, 4, 4])), ("good", polite, fixed(who, [4, 4, 5]))]
    if kind == "low_margin":  # apart, but by a third of a point
        return [("good", good, fixed(who, [5, 4, 4])), ("good", polite, fixed(who, [4, 4, 4]))]
    if kind == "disagree":  # the means are 1.5 apart, but half of the annotators prefer the other one
        who4 = rng.sample(ANNOTATORS, 4)
        return [("good", good, fixed(who4, [5, 5, 2, 2])), ("bad", bad_response(rng), fixed(who4, [1, 1, 3, 3]))]
    if kind == "single":  # one response: no pair
        return [("good", good, rate(rng, who, 4, 5))]
    if kind == "cross":  # different annotators for each response: agreement from rating combinations
        other = rng.sample([a for a in ANNOTATORS if a not in who], 3)
        return [("good", good, rate(rng, who, 4, 5)), ("bad", bad_response(rng), rate(rng, other, 1, 2))]
    if kind == "many":  # four responses, six candidate pairs, at most max_pairs_per_prompt kept
        first, second = rng.sample(HEDGES, 2)
        return [("good", good, fixed(who, [5, 5, 5])), ("mid", polite + " (I might be wrong.)", fixed(who, [3, 3, 3])),
                ("bad", first.format(wrong=rng.choice(WRONG)), fixed(who, [2, 2, 1])),
                ("bad", second.format(wrong=rng.choice(WRONG)), fixed(who, [1, 1, 1]))]
    raise ValueError(kind)


def make_preference() -> tuple[bytes, Counter]:
    """Rows per response sharing ``meta.prompt_id`` (the "messages" layout), seeded and deterministic."""
    rng = random.Random(PREF_SEED)
    seen: set[str] = set()
    kinds = [k for k, n in PREF_COUNTS.items() for _ in range(n)]
    rng.shuffle(kinds)
    lines, counts, n = [], Counter(), 0
    for q, kind in enumerate(kinds, 1):
        while True:  # a fresh prompt whose responses are no near-duplicates of each other
            messages, topic = rng.choice(PREF_GENERATORS)(rng)
            if messages[-2]["content"] in seen:
                continue
            responses = preference_group(rng, kind, messages)
            texts = [shingles(conversation_text(messages[:-1] + [{"content": t}])) for _, t, _ in responses]
            if all(jaccard(texts[i], texts[j]) < 0.6 for i, j in itertools.combinations(range(len(texts)), 2)):
                seen.add(messages[-2]["content"])
                break
        for quality, text, ann in responses:
            n += 1
            row = {"id": f"p-{n:05d}", "messages": messages[:-1] + [{"role": "assistant", "content": text}],
                   "annotations": ann, "meta": {"topic": topic, "prompt_id": f"q-{q:04d}", "planted": kind,
                                                "quality": quality}}
            lines.append(json.dumps(row, ensure_ascii=False).encode() + b"\n")
            counts[kind] += 1
    return b"".join(lines), counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="verify the near-duplicate guarantees")
    args = parser.parse_args()
    blob, records, bad = make()
    args.out.write_bytes(blob)
    counts = Counter(r["meta"]["planted"] for r in records)
    n_lines = blob.count(b"\n")
    print(f"wrote {args.out}: {n_lines} lines, {len(blob) / 1e6:.2f} MB, "
          f"{dict(sorted(counts.items()))}, malformed={len(bad)}")
    pref, pref_counts = make_preference()
    pref_out = args.out.with_name(PREF_OUT.name)
    pref_out.write_bytes(pref)
    n_pref = pref.count(b"\n")
    print(f"wrote {pref_out}: {n_pref} responses to {sum(PREF_COUNTS.values())} prompts, "
          f"{dict(sorted(pref_counts.items()))}")
    if args.check:
        problems = check(records)
        print("\n".join(problems) or "check: ok")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
