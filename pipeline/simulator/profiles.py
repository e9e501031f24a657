"""Model profiles: how often a simulated model's label is the simulator's own verdict.

The simulator never sees a gold label. Its verdict on a text (the lexicon's guess, see
`sentiment`) is the truth its models are measured against, and each model degrades from it:

- every labelled text has a difficulty d in [0, 1), a hash of the text alone (the same for
  every model, seed and temperature);
- every model has a skill s (by name: Opus > Sonnet > Haiku 4.5 > Haiku 3);
- at temperature 0 a model answers the verdict when d < s, else the text's distractor (a
  wrong choice, also a hash of the text). So a stronger model's wrong texts are a subset of
  a weaker one's, and its accuracy against the verdict is about s;
- above 0, an answer flips (verdict <-> distractor) with a chance that grows with the
  temperature and shrinks with the distance |d - s|: a model wavers near its limit, where
  repeated samples of one request disagree, and hardly at all on texts far from it.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Model name substring -> skill; the first that the (lower-case) name contains wins, so the
# more specific names come first ("3-5-haiku" before "haiku").
MODEL_SKILLS: tuple[tuple[str, float], ...] = (
    ("3-opus", 0.88),
    ("opus", 0.95),
    ("3-sonnet", 0.78),
    ("3-5-sonnet", 0.86),
    ("3-7-sonnet", 0.87),
    ("sonnet", 0.90),
    ("3-5-haiku", 0.76),
    ("3-haiku", 0.70),
    ("haiku", 0.82),
)
UNKNOWN_SKILL = 0.80  # a model no entry names: in the middle of the range
# A row this far from a model's limit still flips sometimes above temperature 0: the chance
# falls by e for each FLIP_REACH of distance.
FLIP_REACH = 0.08
MAX_FLIP = 0.5  # at the limit and temperature 1 an answer is a coin toss
MAX_TEMPERATURE = 1.0  # chat completions allow up to 2; above 1 counts as 1

Skills = Sequence[tuple[str, float]]  # overrides: (model name substring, skill)


def skill_of(model: str, overrides: Skills = ()) -> float:
    """The skill of `model`: the first override naming it, else the built-in table."""
    name = model.lower()
    for pattern, skill in (*overrides, *MODEL_SKILLS):
        if pattern.lower() in name:
            return skill
    return UNKNOWN_SKILL


def parse_skill(text: str) -> tuple[str, float]:
    """`MODEL=SKILL` (a name substring and a skill in [0, 1]); ValueError if not."""
    pattern, separator, value = text.rpartition("=")
    if not separator or not pattern.strip():
        raise ValueError(f"--skill wants MODEL=SKILL, got {text!r}")
    skill = float(value)
    check_skill(skill)
    return pattern.strip(), skill


def check_skill(skill: float) -> None:
    if not 0.0 <= skill <= 1.0:
        raise ValueError(f"a skill must be between 0 and 1 (got {skill})")


def _text_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16, person=b"sim-difficulty").digest()


def difficulty(text: str) -> float:
    """How hard `text` is to label, in [0, 1): a hash of the text alone."""
    return int.from_bytes(_text_hash(text)[:8], "big") / 2.0**64


def distractor(text: str, verdict: str, choices: Sequence[str]) -> str:
    """The wrong choice a model makes on `text` (the verdict itself if there is none)."""
    wrong = [choice for choice in choices if choice != verdict]
    if not wrong:
        return verdict
    return wrong[int.from_bytes(_text_hash(text)[8:], "big") % len(wrong)]


def flip_chance(row_difficulty: float, skill: float, temperature: float) -> float:
    """The chance that an answer above temperature 0 differs from the one at 0."""
    heat = min(max(temperature, 0.0), MAX_TEMPERATURE) / MAX_TEMPERATURE
    return MAX_FLIP * heat * math.exp(-abs(row_difficulty - skill) / FLIP_REACH)


@dataclass(frozen=True, slots=True)
class Judge:
    """One request's labeller: the verdict, degraded by the model's profile.

    `rng` is the request's own random source (used only above temperature 0), so identical
    requests may get different answers. `row_difficulty` pins a text's difficulty (None: its
    hash).
    """

    verdict: Callable[[str, list[str]], str]  # (text, choices) -> the simulator's verdict
    skill: float
    temperature: float = 0.0
    rng: random.Random | None = None
    row_difficulty: float | None = None

    def label(self, text: str, choices: list[str]) -> str:
        truth = self.verdict(text, choices)
        d = self.row_difficulty if self.row_difficulty is not None else difficulty(text)
        right = d < self.skill
        if self.temperature > 0:
            rng = self.rng if self.rng is not None else random.Random()
            if rng.random() < flip_chance(d, self.skill, self.temperature):
                right = not right
        return truth if right else distractor(text, truth, choices)
