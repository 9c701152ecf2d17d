"""Format presets: how one source row (a dict) becomes the record fields messages / annotations / meta.

Every problem with a row raises ``RowError(reason, detail)``; ingest quarantines the row under that reason.
Reasons are short, stable names because the ledger counts by them:

- ``missing_field``: a field the preset needs is absent (or null);
- ``wrong_type``: a field has the wrong JSON type (``messages`` is a string, a rating is a list, ...);
- ``empty_messages``: the conversation has no messages; ``empty_content``: a message's text is empty;
- ``bad_role``: a role that is not system / user / assistant (or a known alias);
- ``no_assistant``: nothing to learn from: no assistant message;
- ``unknown_format``: ``format: auto`` and the row matches no preset;
- ``rating_out_of_scale``: a rating outside the source's declared ``rating_scale``.

Export quirks are read as their authors meant: role names are matched without surrounding spaces or case
(``"User "`` is ``user``); a NaN or infinite rating (Python's ``json.dumps`` writes ``NaN``) is a missing
rating; a per-message ``weight`` (ShareGPT/axolotl: ``weight: 0`` = no loss on this turn) is carried into the
record's message; integer and string ids stay distinct (``7`` is not ``"7"``), and an integral float id
(``7.0``, pandas' export of an id column with gaps) is the integer id.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from schemas.record import ROLES

try:  # orjson is several times faster; it comes with prefect, but plain json works too
    import orjson

    def dumps(obj: Any) -> str:
        return orjson.dumps(obj, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
except ImportError:  # pragma: no cover
    import json

    def dumps(obj: Any) -> str:
        return json.dumps(obj, default=str, ensure_ascii=False, separators=(",", ":"))

CANONICAL_ROLES = frozenset(ROLES)
ROLE_ALIASES = {"system": "system", "developer": "system", "user": "user", "human": "user",
                "assistant": "assistant", "gpt": "assistant", "model": "assistant", "bot": "assistant",
                "chatgpt": "assistant"}
# The source fields each preset reads by default; field_map renames them.
DEFAULT_FIELDS = {"id": "id", "meta": "meta", "messages": "messages", "role": "role", "content": "content",
                  "system": "system", "instruction": "instruction", "input": "input", "output": "output",
                  "prompt": "prompt", "completion": "completion", "text": "text", "weight": "weight",
                  "chosen": "chosen", "rejected": "rejected", "completions": "completions"}
MISSING = object()
_SKIP_CACHE: dict[frozenset, frozenset] = {}  # top-level fields consumed by a preset, per set of used fields


class RowError(ValueError):
    """A row that cannot become a record; ``reason`` is the ledger key, ``detail`` says what and where."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def get_path(row: Mapping, path: str) -> Any:
    """``row['a']['b']`` for path 'a.b' (a plain key wins if it exists, so keys with dots still work)."""
    if path in row:
        return row[path]
    node: Any = row
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return MISSING
        node = node[part]
    return node


def maybe_json(value: Any) -> Any:
    """CSV cells and some hub columns hold lists or objects as JSON text."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            import json
            return json.loads(value)
        except ValueError:
            return value
    return value


def detect_format(row: Mapping, fields: Mapping[str, str]) -> str | None:
    """Guess the preset from a row's keys; None when nothing fits."""
    def has(key: str) -> bool:
        return get_path(row, fields[key]) is not MISSING
    if has("messages"):
        return "messages"
    if get_path(row, "conversations") is not MISSING:
        return "sharegpt"
    if has("chosen") and has("rejected"):
        return "chosen_rejected"
    if has("completions") and (has("prompt") or has("instruction")):
        return "rated_completions"
    if has("instruction") and has("output"):
        return "alpaca"
    if has("prompt") and has("completion"):
        return "prompt_completion"
    if has("text"):
        return "text"
    return None


def text_field(row: Mapping, name: str, field: str, required: bool = True) -> str | None:
    value = get_path(row, field)
    if value is MISSING or value is None:
        if required:
            raise RowError("missing_field", f"no {field!r} field ({name})")
        return None
    if not isinstance(value, str):
        raise RowError("wrong_type", f"{field!r} must be a string, got {type(value).__name__}")
    return value


def message_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text parts
        parts = [p.get("text") for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)]
        if len(parts) == len(content):
            return "".join(parts)
    raise RowError("wrong_type", f"{where}: content must be a string, got {type(content).__name__}")


def parse_messages(value: Any, fields: Mapping[str, str], field: str) -> list[dict[str, str]]:
    """Validate a list of {role, content} (or ShareGPT {from, value}) messages."""
    value = maybe_json(value)
    if value is MISSING or value is None:
        raise RowError("missing_field", f"no {field!r} field")
    if not isinstance(value, list):
        raise RowError("wrong_type", f"{field!r} must be a list of messages, got {type(value).__name__}")
    if not value:
        raise RowError("empty_messages", f"{field!r} is an empty list")
    role_key, content_key, weight_key = fields["role"], fields["content"], fields["weight"]
    canonical = role_key == "role" and content_key == "content" and weight_key == "weight"
    out = []
    for i, m in enumerate(value):
        # fast path: a well-formed message without a weight, no error text to build
        if type(m) is dict and weight_key not in m:
            role, content = m.get(role_key), m.get(content_key)
            if type(role) is str and type(content) is str and content.strip():
                if canonical and role in CANONICAL_ROLES:
                    out.append(m)  # Arrow reads just role and content (weight null) from it; no copy needed
                    continue
                canon = ROLE_ALIASES.get(role) or ROLE_ALIASES.get(role.strip().lower())
                if canon is not None:
                    out.append({"role": canon, "content": content})
                    continue
        where = f"{field}[{i}]"
        if not isinstance(m, Mapping):
            raise RowError("wrong_type", f"{where} must be an object, got {type(m).__name__}")
        role = m.get(role_key, m.get("from", MISSING))
        content = m.get(content_key, m.get("value", MISSING))
        if role is MISSING or role is None:
            raise RowError("missing_field", f"{where} has no role")
        if not isinstance(role, str):
            raise RowError("wrong_type", f"{where}: role must be a string, got {type(role).__name__}")
        canon = ROLE_ALIASES.get(role.strip().lower())
        if canon is None:
            raise RowError("bad_role", f"{where}: role {role[:40]!r}")
        if content is MISSING or content is None:
            raise RowError("missing_field", f"{where} has no content")
        text = message_text(content, where)
        if not text.strip():
            raise RowError("empty_content", f"{where} ({canon}) has empty content")
        weight = message_weight(m.get(weight_key), where)
        out.append({"role": canon, "content": text} if weight is None else
                   {"role": canon, "content": text, "weight": weight})
    return out


def message_weight(value: Any, where: str) -> float | None:
    """A message's loss weight: None (absent: the tokenizer's train_on decides) or a finite number >= 0."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise RowError("wrong_type", f"{where}: weight {value[:20]!r} is not a number") from None
    if not isinstance(value, (int, float)) or not value == value or value in (float("inf"), float("-inf")) \
            or value < 0:
        raise RowError("wrong_type", f"{where}: weight must be a finite number >= 0, got {str(value)[:20]}")
    return float(value)


def build_messages(row: Mapping, preset: str, fields: Mapping[str, str]) -> tuple[list[dict], set[str]]:
    """The conversation of a row under a preset, and the source fields it consumed."""
    used: set[str] = set()
    if preset in ("messages", "sharegpt"):
        field = fields["messages"] if preset == "messages" or "messages" in fields.get("_mapped", ()) \
            else "conversations"
        messages = parse_messages(get_path(row, field), fields, field)
        used.add(field)
    elif preset == "alpaca":
        instruction = text_field(row, "alpaca instruction", fields["instruction"])
        extra = text_field(row, "alpaca input", fields["input"], required=False)
        output = text_field(row, "alpaca output", fields["output"])
        user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        used |= {fields["instruction"], fields["input"], fields["output"]}
    elif preset == "prompt_completion":
        prompt, completion = get_path(row, fields["prompt"]), get_path(row, fields["completion"])
        if isinstance(prompt, list) or isinstance(completion, list):  # TRL's conversational prompt-completion
            messages = (parse_messages(prompt, fields, fields["prompt"]) +
                        parse_messages(completion, fields, fields["completion"]))
        else:
            messages = [{"role": "user", "content": text_field(row, "prompt", fields["prompt"])},
                        {"role": "assistant", "content": text_field(row, "completion", fields["completion"])}]
        used |= {fields["prompt"], fields["completion"]}
    elif preset == "text":
        messages = [{"role": "assistant", "content": text_field(row, "text", fields["text"])}]
        used.add(fields["text"])
    else:
        raise RowError("unknown_format", f"no preset {preset!r}")
    system = get_path(row, fields["system"])
    if isinstance(system, str) and system.strip() and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
        used.add(fields["system"])
    for m in messages:
        if m["role"] == "assistant":
            break
    else:
        raise RowError("no_assistant", "the conversation has no assistant message")
    if preset not in ("messages", "sharegpt"):  # parse_messages has checked the others already
        for m in messages:
            if not m["content"].strip():
                raise RowError("empty_content", f"{m['role']} message has empty content")
    return messages, used


def rating_value(value: Any, where: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RowError("wrong_type", f"{where}: rating must be a number, got {type(value).__name__}")
    try:
        rating = float(value)
    except ValueError:
        raise RowError("wrong_type", f"{where}: rating {value[:20]!r} is not a number") from None
    if rating != rating or rating in (float("inf"), float("-inf")):
        return None  # NaN / Infinity: how exporters spell a missing rating
    return rating


def label_list(value: Any, where: str) -> list[str]:
    value = maybe_json(value)
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return list(value)
    raise RowError("wrong_type", f"{where}: labels must be a list of strings")


# Top-level fields that look like annotations; seen in a row of a source without an annotation_map, they are
# noted (ingest warns, naming the config key) instead of passing silently into meta.
ANNOTATION_LOOKALIKES = frozenset({"rating", "ratings", "score", "scores", "label", "labels", "votes"})


def build_annotations(row: Mapping, amap: Mapping[str, str], notes: Counter | None = None
                      ) -> tuple[list[dict], set[str]]:
    """Annotations from a list of per-annotator objects, or from flat per-row rating/label/id fields.

    ``notes`` counts keys that look like annotations but are not mapped: annotation-object keys beside a
    missing rating, and annotation-like top-level fields of a row without annotations."""
    if "ratings" in amap:
        ratings = maybe_json(get_path(row, amap["ratings"]))
        if ratings is MISSING or ratings is None:
            return [], {amap["ratings"]}
        ids = maybe_json(get_path(row, amap["annotator_ids"])) if "annotator_ids" in amap else MISSING
        labels = maybe_json(get_path(row, amap["label_lists"])) if "label_lists" in amap else MISSING
        scalar = not isinstance(ratings, list)
        ratings = [ratings] if scalar else ratings
        ids = [None] * len(ratings) if ids is MISSING or ids is None else ([ids] if scalar else ids)
        labels = [[]] * len(ratings) if labels is MISSING or labels is None else ([labels] if scalar else labels)
        if not isinstance(ids, list) or not isinstance(labels, list) or not len(ids) == len(labels) == len(ratings):
            raise RowError("wrong_type", "ratings, annotator ids and label lists must be parallel lists")
        out = [{"annotator_id": None if a is None else str(a), "rating": rating_value(r, f"ratings[{i}]"),
                "labels": label_list(lab, f"label_lists[{i}]")}
               for i, (a, r, lab) in enumerate(zip(ids, ratings, labels, strict=True))]
        return out, {amap[k] for k in ("ratings", "annotator_ids", "label_lists") if k in amap}
    field = amap.get("annotations", "annotations")
    value = maybe_json(get_path(row, field))
    if value is MISSING or value is None:
        if notes is not None and not amap:
            notes.update(f"{k} (top-level field)" for k in row if k in ANNOTATION_LOOKALIKES)
        return [], {field}
    if not isinstance(value, list):
        raise RowError("wrong_type", f"{field!r} must be a list of annotations, got {type(value).__name__}")
    k_id, k_rating, k_labels = (amap.get(k, k) for k in ("annotator_id", "rating", "labels"))
    canonical = (k_id, k_rating, k_labels) == ("annotator_id", "rating", "labels")
    out = []
    for i, a in enumerate(value):
        if type(a) is dict:  # fast path: string id, finite numeric rating, list of string labels
            annotator, rating, labels = a.get(k_id), a.get(k_rating), a.get(k_labels)
            kind = type(rating)
            if (type(annotator) is str and (kind is int or (kind is float and rating - rating == 0))
                    and type(labels) is list and (not labels or all(type(x) is str for x in labels))):
                # Arrow reads just the three fields (an int rating as a double); no copy needed
                out.append(a if canonical else {"annotator_id": annotator, "rating": rating, "labels": labels})
                continue
        where = f"{field}[{i}]"
        if not isinstance(a, Mapping):
            raise RowError("wrong_type", f"{where} must be an object, got {type(a).__name__}")
        annotator = a.get(k_id)
        if annotator is not None and not isinstance(annotator, (str, int)):
            raise RowError("wrong_type", f"{where}: annotator id must be a string")
        if notes is not None and a.get(k_rating) is None:
            notes.update(f"{k} (in {field})" for k in a if k not in (k_id, k_rating, k_labels))
        out.append({"annotator_id": None if annotator is None else str(annotator),
                    "rating": rating_value(a.get(k_rating), where), "labels": label_list(a.get(k_labels), where)})
    return out, {field}


def check_scale(annotations: list[dict], scale: tuple[float, float]) -> None:
    """RowError ``rating_out_of_scale`` when a rating lies outside the source's declared scale."""
    lo, hi = scale
    for i, a in enumerate(annotations):
        rating = a.get("rating")
        if rating is not None and not lo <= rating <= hi:
            raise RowError("rating_out_of_scale", f"annotations[{i}]: rating {rating:g} outside the source's "
                                                  f"rating_scale [{lo:g}, {hi:g}]")


def build_meta(row: Mapping, fields: Mapping[str, str], used: set[str], raw_id: str | int | None,
               extra: Mapping[str, Any] | None = None) -> str:
    """The row's own meta object plus every top-level field no preset consumed, as a JSON string."""
    meta: dict[str, Any] = {}
    own = maybe_json(get_path(row, fields["meta"]))
    if isinstance(own, Mapping):
        meta.update(own)
    elif own is not MISSING and own is not None:
        meta["meta"] = own
    key = frozenset(used)
    skip = _SKIP_CACHE.get(key)
    if skip is None:
        skip = set(used) | {fields["meta"], fields["id"]}
        skip = _SKIP_CACHE[key] = frozenset(skip | {p.split(".")[0] for p in skip})
    for k, v in row.items():
        if k not in skip:
            meta[k] = v
    if raw_id is not None:
        meta["source_id"] = raw_id
    if extra:
        meta.update(extra)
    return dumps(meta)


def raw_id_of(row: Mapping, fields: Mapping[str, str]) -> str | int | None:
    """The row's own id: a string or an integer (kept apart: ``7`` and ``"7"`` are two ids); None if absent."""
    value = get_path(row, fields["id"])
    if value is MISSING or value is None or value == "":
        return None
    if isinstance(value, float) and not isinstance(value, bool):
        if value != value:  # NaN: pandas' missing id
            return None
        if value.is_integer():
            return int(value)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RowError("wrong_type", f"id must be a string or integer, got {type(value).__name__}")
    return value


def convert_row(row: Any, preset: str, fields: Mapping[str, str], amap: Mapping[str, str],
                scale: tuple[float, float] | None = None, notes: Counter | None = None
                ) -> tuple[str | int | None, list[dict], list[dict], str]:
    """(raw id, messages, annotations, meta JSON) of one source row, or RowError."""
    if not isinstance(row, dict):
        raise RowError("not_an_object", f"a row must be a JSON object, got {type(row).__name__}")
    raw_id = raw_id_of(row, fields)
    messages, used = build_messages(row, preset, fields)
    annotations, used_ann = build_annotations(row, amap, notes)
    if scale is not None:
        check_scale(annotations, scale)
    extra = {"rating_scale": list(scale)} if scale is not None else None
    return raw_id, messages, annotations, build_meta(row, fields, used | used_ann, raw_id, extra)


def resolve_fields(field_map: Mapping[str, str]) -> dict[str, Any]:
    fields: dict[str, Any] = {**DEFAULT_FIELDS, **field_map}
    fields["_mapped"] = frozenset(field_map)
    return fields


# ---- Preference layouts: one source row holds several responses; each becomes a record of its own. ----
# The records of one row share ``meta.prompt_id`` (set ``preference.group_key: prompt_id`` to group by it);
# a given pair also carries ``meta.preference`` (chosen / rejected) and ``meta.pair_id`` (tasks.preference).
PREFERENCE_PRESETS = ("chosen_rejected", "rated_completions")
_COMPLETION_TEXT = ("response", "completion", "text", "content", "output")
_COMPLETION_SCORE = ("rating", "score", "overall_score")


def _row_key(row: Mapping, fields: Mapping[str, str]) -> str:
    """The row's own id, or a digest of its content: what its records' prompt_id / pair_id are."""
    import hashlib

    raw = raw_id_of(row, fields)
    return raw if raw is not None else hashlib.sha1(dumps(row).encode()).hexdigest()[:16]


def _common_prefix(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _sub_row(row: Mapping, fields: Mapping[str, str], consumed: set[str], prompt: Any, completion: Any,
             suffix: str, meta: dict, annotations: Any) -> dict:
    """A prompt_completion row for one response, carrying the parent's other fields into its meta."""
    raw = raw_id_of(row, fields)
    own = maybe_json(get_path(row, fields["meta"]))
    merged = {**(own if isinstance(own, Mapping) else {}), **meta}
    for k, v in row.items():
        if k not in consumed and k not in (fields["meta"], fields["id"]):
            merged.setdefault(k, v)
    out = {fields["prompt"]: prompt, fields["completion"]: completion, fields["meta"]: merged}
    if raw is not None:
        out[fields["id"]] = f"{raw}/{suffix}"
    if annotations is not MISSING and annotations is not None:
        out["annotations"] = annotations
    return out


def explode_chosen_rejected(row: Mapping, fields: Mapping[str, str]) -> list[dict]:
    """TRL's preference layouts, explicit prompt or implicit (chosen / rejected as whole conversations)."""
    chosen, rejected = (maybe_json(get_path(row, fields[k])) for k in ("chosen", "rejected"))
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if value is MISSING or value is None:
            raise RowError("missing_field", f"no {fields[name]!r} field")
        if not isinstance(value, (str, list)):
            raise RowError("wrong_type", f"{fields[name]!r} must be text or a list of messages")
    prompt = maybe_json(get_path(row, fields["prompt"]))
    if prompt is MISSING or prompt is None:
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise RowError("missing_field", f"no {fields['prompt']!r} field (needed unless chosen and rejected "
                                            "are whole conversations)")
        n = _common_prefix(chosen, rejected)  # the implicit prompt: the turns both conversations share
        if n == 0 or n == len(chosen) or n == len(rejected):
            raise RowError("wrong_type", "chosen and rejected share no prompt, or one contains the other")
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    key = _row_key(row, fields)
    consumed = {fields["prompt"], fields["chosen"], fields["rejected"], "score_chosen", "score_rejected"}
    out = []
    for side, completion in (("chosen", chosen), ("rejected", rejected)):
        score = get_path(row, f"score_{side}")
        annotations = MISSING if score is MISSING or score is None else [
            {"annotator_id": "source", "rating": rating_value(score, f"score_{side}"), "labels": []}]
        out.append(_sub_row(row, fields, consumed, prompt, completion, side,
                            {"prompt_id": key, "pair_id": key, "preference": side}, annotations))
    return out


def explode_rated_completions(row: Mapping, fields: Mapping[str, str]) -> list[dict]:
    """A prompt and a list of completions, each with its own annotations (a list), ratings or one score."""
    prompt = get_path(row, fields["prompt"])
    if prompt is MISSING or prompt is None:
        prompt = get_path(row, fields["instruction"])  # UltraFeedback's raw layout names it 'instruction'
    if prompt is MISSING or prompt is None:
        raise RowError("missing_field", f"no {fields['prompt']!r} field")
    items = maybe_json(get_path(row, fields["completions"]))
    if not isinstance(items, list) or not items:
        raise RowError("wrong_type", f"{fields['completions']!r} must be a non-empty list of completions")
    key = _row_key(row, fields)
    consumed = {fields["prompt"], fields["instruction"], fields["completions"]}
    out = []
    for k, item in enumerate(items):
        where = f"{fields['completions']}[{k}]"
        if isinstance(item, str):
            item = {"response": item}
        if not isinstance(item, Mapping):
            raise RowError("wrong_type", f"{where} must be an object or text")
        text_key = next((t for t in _COMPLETION_TEXT if t in item), None)
        if text_key is None:
            raise RowError("missing_field", f"{where} has none of {list(_COMPLETION_TEXT)}")
        annotations: Any = item.get("annotations", MISSING)
        if not isinstance(annotations, list):
            annotations = MISSING
        if annotations is MISSING and isinstance(item.get("ratings"), list):
            annotations = [{"annotator_id": f"rater{i}", "rating": rating_value(v, f"{where}.ratings[{i}]"),
                            "labels": []} for i, v in enumerate(item["ratings"])]
        score_key = next((s for s in _COMPLETION_SCORE if s in item), None)
        if annotations is MISSING and score_key is not None:
            annotations = [{"annotator_id": "source", "rating": rating_value(item[score_key], where),
                            "labels": []}]
        extra = {f"completion_{n}": v for n, v in item.items()
                 if n not in (text_key, "annotations", "ratings", score_key)}
        out.append(_sub_row(row, fields, consumed, prompt, item[text_key], str(k),
                            {"prompt_id": key, **extra}, annotations))
    return out


def explode_row(row: Any, preset: str, fields: Mapping[str, str]) -> list[dict]:
    """The prompt_completion rows of a preference-layout row (RowError when it has none)."""
    if not isinstance(row, dict):
        raise RowError("not_an_object", f"a row must be a JSON object, got {type(row).__name__}")
    if preset == "chosen_rejected":
        return explode_chosen_rejected(row, fields)
    return explode_rated_completions(row, fields)
