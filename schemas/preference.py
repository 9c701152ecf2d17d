"""Config of the preference stage (annotations -> DPO pairs or KTO labels) and the schemas of what it writes.

A *response* is one curated record: its last message is the assistant's answer, everything before it is the
prompt. Responses are grouped by their normalized prompt (or by a meta field named in ``group_key``), rated by
the aggregate of their annotators' ratings, and paired within each group (``train.objective: dpo``) or labelled
desirable / undesirable (``train.objective: kto``). What makes no pair or label is counted in the ledger by
reason and kept in ``rejects/`` (see tasks.preference).
"""
from __future__ import annotations

from typing import Literal

import pyarrow as pa
from pydantic import Field, model_validator

from schemas.base import StrictModel
from schemas.record import MESSAGE, REJECT_FIELDS


class PreferenceConfig(StrictModel):
    group_key: str | None = Field(
        None, description="Meta field whose value groups the responses to one prompt (e.g. 'prompt_id'); "
                          "None groups by the normalized prompt (every message before the last one: NFKC, "
                          "case-folded, whitespace collapsed).")
    aggregate: Literal["mean", "median"] = Field("mean", description="How a response's ratings are combined.")
    min_margin: float = Field(1.0, gt=0, description=(
        "Smallest aggregate-rating difference between chosen and rejected. Equal aggregates are ties and are "
        "always dropped; a positive difference below this is 'low_margin'."))
    min_agreement: float = Field(0.6, ge=0, le=1, description=(
        "Smallest share of annotators who rate chosen strictly above rejected (among the annotators who rated "
        "both; see `agreement`). KTO: the share whose own rating falls on the label's side of its threshold."))
    agreement: Literal["auto", "shared", "cross"] = Field("auto", description=(
        "'shared': only annotators who rated both responses count (a pair with none is "
        "'no_shared_annotators'); 'cross': every (chosen rating, rejected rating) combination counts, as the "
        "probability that a rating of chosen beats one of rejected; 'auto': shared when there are any, else cross."))
    max_pairs_per_prompt: int | None = Field(3, ge=1, description=(
        "At most this many pairs per prompt, largest margin first (then agreement, then ids); None: all."))
    desirable_min_rating: float = Field(4.0, description="KTO: an aggregate rating >= this is desirable.")
    undesirable_max_rating: float = Field(2.0, description="KTO: an aggregate rating <= this is undesirable; "
                                                           "in between is 'ambiguous_rating'.")
    warn_share: float = Field(0.5, gt=0, le=1, description=(
        "Warn (naming the config key) when more than this share of the responses makes no pair or label."))

    @model_validator(mode="after")
    def _thresholds_ordered(self) -> PreferenceConfig:
        if self.undesirable_max_rating >= self.desirable_min_rating:
            raise ValueError(f"preference.undesirable_max_rating ({self.undesirable_max_rating}) must be below "
                             f"preference.desirable_min_rating ({self.desirable_min_rating})")
        return self


# One DPO pair: TRL's conversational preference layout (prompt / chosen / rejected as message lists) plus where
# it came from and how strongly the annotators back it.
PAIR_SCHEMA = pa.schema([
    ("pair_id", pa.string()),
    ("group", pa.string()),
    ("prompt", pa.list_(MESSAGE)),
    ("chosen", pa.list_(MESSAGE)),
    ("rejected", pa.list_(MESSAGE)),
    ("chosen_id", pa.string()),
    ("rejected_id", pa.string()),
    ("chosen_rating", pa.float64()),  # aggregate rating; null for a given (explicit) pair without ratings
    ("rejected_rating", pa.float64()),
    ("margin", pa.float64()),
    ("agreement", pa.float64()),
    ("n_annotators", pa.int32()),  # how many annotators (shared) or rating combinations (cross) back it
    ("agreement_basis", pa.string()),  # shared | cross | explicit
    ("source", pa.string()),
])
PAIR_REJECT_SCHEMA = pa.schema(list(PAIR_SCHEMA) + [pa.field(n, t) for n, t in REJECT_FIELDS])

# One KTO example: TRL's conversational unpaired layout (prompt / completion / label).
UNPAIRED_SCHEMA = pa.schema([
    ("example_id", pa.string()),  # the record id
    ("group", pa.string()),
    ("prompt", pa.list_(MESSAGE)),
    ("completion", pa.list_(MESSAGE)),
    ("label", pa.bool_()),  # True: desirable
    ("rating", pa.float64()),
    ("agreement", pa.float64()),
    ("n_annotators", pa.int32()),
    ("source", pa.string()),
])

# Tokenized pair / example rows: labels are -100 everywhere but the final response (and its end of turn).
PAIR_TOKENS_SCHEMA = pa.schema([
    ("pair_id", pa.string()),
    ("chosen_input_ids", pa.list_(pa.int32())),
    ("chosen_labels", pa.list_(pa.int32())),
    ("rejected_input_ids", pa.list_(pa.int32())),
    ("rejected_labels", pa.list_(pa.int32())),
    ("num_tokens", pa.int32()),
])
UNPAIRED_TOKENS_SCHEMA = pa.schema([
    ("example_id", pa.string()),
    ("input_ids", pa.list_(pa.int32())),
    ("labels", pa.list_(pa.int32())),
    ("label", pa.bool_()),
    ("num_tokens", pa.int32()),
])


class PreferenceLossConfig(StrictModel):
    """The objective's own knobs (``train.preference``); which objective is ``train.objective``."""

    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference (the base): "
                                                "rewards are beta * (log p_adapter - log p_base).")
    dpo_loss: Literal["sigmoid", "ipo", "hinge"] = Field(
        "sigmoid", description="DPO's logistic loss, IPO's squared loss on per-token log-ratios, or SLiC's hinge.")
    desirable_weight: float = Field(1.0, gt=0, description="KTO: weight of the desirable examples' losses.")
    undesirable_weight: float = Field(1.0, gt=0, description="KTO: weight of the undesirable examples' losses.")
    precompute_ref: bool = Field(False, description=(
        "DPO: score every training pair with the reference once before training and keep the result beside the "
        "checkpoints, instead of a reference forward pass per step (the held-out pairs' are always cached)."))
