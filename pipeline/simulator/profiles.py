"""Model profiles: how often a simulated model's label is the simulator's own verdict.

The simulator never sees a gold label. Its verdict on a text (the lexicon's guess, see
`sentiment`) is the truth its models are measured against, and each model degrades from it:

- every labelled text has a difficulty d in [0, 1), a hash of the text alone (the same for
  every model, seed and temperature);
- every model has a skill s (by name: Opus > Sonnet > Haiku 4.5 > Haiku 3);
- at temperature 0 a model answers the verdict when d < s, else the text's distractor (a
  wrong choice, also a hash of the text). So a stronger model's wrong texts are a subset of
  a weaker one's, and its accuracy against the verdict is about s;
- above 0, below the limit (d < s), an answer flips (verdict <-> distractor) with a chance
  that grows with the temperature and shrinks with the distance s - d: a model wavers near
  its limit and hardly at all on texts it knows well. Beyond it (d >= s) the model does not
  know the text: with a chance that grows with the temperature (certain at 1) it guesses,
  a choice drawn uniformly, else it answers the distractor. So repeated samples of one
  request disagree on most texts beyond a model's limit; with 3 samples and 3 choices at
  temperature 1, a ninth of them (3 * (1/3)**3) still agree on one label, right or wrong;
- when the user message asks for one (it contains STATED_MARKER), a label comes with a
  stated confidence (see `stated_confidence`): high where the model knows the text well,
  falling near its limit, and mostly low or middling beyond it, but overconfident on some
  texts it gets wrong, as real models are.
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

# What a prompt contains when it asks for a stated confidence after the label: the reply
# then ends with a line "Confidence: N", N an integer 0..100.
STATED_MARKER = "Confidence: <0-100>"
# Stated confidence on a known text (d < s): from KNOWN_FLOOR at the limit up towards 100,
# closing the gap by e for each CONFIDENCE_REACH of margin s - d.
KNOWN_FLOOR = 60.0
CONFIDENCE_REACH = 0.08
# Beyond the limit: from GUESS_CEILING just past it down towards GUESS_FLOOR far past it...
GUESS_CEILING, GUESS_FLOOR = 65.0, 30.0
# ...but on this share of texts (a hash of the text) a model that does not know is sure of
# itself anyway, and says OVERCONFIDENT points up to OVERCONFIDENT_SPAN more.
OVERCONFIDENT_SHARE = 0.2
OVERCONFIDENT, OVERCONFIDENT_SPAN = 80.0, 15.0
# Per-text noise (+- half of it, a hash of the text) keeps the signal imperfect even at
# temperature 0; above 0 a draw of the request's rng (sd CONFIDENCE_JITTER * heat) adds to it.
CONFIDENCE_NOISE = 12.0
CONFIDENCE_JITTER = 6.0

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


def _heat(temperature: float) -> float:
    """The temperature as a share of MAX_TEMPERATURE, in [0, 1]."""
    return min(max(temperature, 0.0), MAX_TEMPERATURE) / MAX_TEMPERATURE


def flip_chance(row_difficulty: float, skill: float, temperature: float) -> float:
    """Below the limit: the chance that an answer above temperature 0 differs from the one
    at 0; it falls by e for each FLIP_REACH of distance. (Beyond it: `guess_chance`.)"""
    if row_difficulty >= skill:
        return 0.0
    return MAX_FLIP * _heat(temperature) * math.exp(-(skill - row_difficulty) / FLIP_REACH)


def guess_chance(row_difficulty: float, skill: float, temperature: float) -> float:
    """Beyond the limit: the chance that the model guesses (a choice drawn uniformly) rather
    than answering the distractor; the temperature as a share of its top."""
    return _heat(temperature) if row_difficulty >= skill else 0.0


def _confidence_draws(text: str) -> tuple[float, float]:
    """Two uniform draws in [0, 1) from `text` alone, apart from difficulty's hash."""
    digest = hashlib.blake2b(text.encode(), digest_size=16, person=b"sim-confidence").digest()
    return (
        int.from_bytes(digest[:8], "big") / 2.0**64,
        int.from_bytes(digest[8:], "big") / 2.0**64,
    )


def stated_confidence(
    row_difficulty: float,
    skill: float,
    text: str,
    temperature: float = 0.0,
    rng: random.Random | None = None,
) -> int:
    """The confidence (0..100) a model states for its label on `text`.

    The rule, with margin m = s - d:
    - known (m > 0): KNOWN_FLOOR + (100 - KNOWN_FLOOR) * (1 - exp(-m / CONFIDENCE_REACH)),
      about 85 at m = CONFIDENCE_REACH and near 100 far below the limit;
    - beyond (m <= 0): GUESS_CEILING falling towards GUESS_FLOOR by e for each
      CONFIDENCE_REACH past the limit; except on OVERCONFIDENT_SHARE of texts (a hash of
      the text), which get OVERCONFIDENT plus up to OVERCONFIDENT_SPAN: sure, and wrong
      at temperature 0;
    - plus per-text noise in +-CONFIDENCE_NOISE/2 (a hash of the text), so confidence ranks
      texts well but not perfectly; above temperature 0, plus a normal draw of `rng` (sd
      CONFIDENCE_JITTER * heat). Clipped to 0..100 and rounded.
    At temperature 0 it is a function of (d, s, text) alone: `rng` is not touched.
    """
    overconfident, noise = _confidence_draws(text)
    margin = skill - row_difficulty
    if margin > 0:
        value = KNOWN_FLOOR + (100.0 - KNOWN_FLOOR) * (1.0 - math.exp(-margin / CONFIDENCE_REACH))
    elif overconfident < OVERCONFIDENT_SHARE:
        value = OVERCONFIDENT + OVERCONFIDENT_SPAN * overconfident / OVERCONFIDENT_SHARE
    else:
        fall = math.exp(margin / CONFIDENCE_REACH)  # 1 at the limit, towards 0 past it
        value = GUESS_FLOOR + (GUESS_CEILING - GUESS_FLOOR) * fall
    value += (noise - 0.5) * CONFIDENCE_NOISE
    heat = _heat(temperature)
    if heat > 0:
        value += (rng if rng is not None else random.Random()).gauss(0.0, CONFIDENCE_JITTER * heat)
    return round(min(max(value, 0.0), 100.0))


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

    def difficulty_of(self, text: str) -> float:
        return self.row_difficulty if self.row_difficulty is not None else difficulty(text)

    def label(self, text: str, choices: list[str]) -> str:
        truth = self.verdict(text, choices)
        d = self.difficulty_of(text)
        right = d < self.skill
        if self.temperature > 0:
            rng = self.rng if self.rng is not None else random.Random()
            if choices and rng.random() < guess_chance(d, self.skill, self.temperature):
                return rng.choice(choices)
            if rng.random() < flip_chance(d, self.skill, self.temperature):
                right = not right
        return truth if right else distractor(text, truth, choices)

    def confidence(self, text: str) -> int:
        """The confidence the model states for its label on `text` (see stated_confidence)."""
        return stated_confidence(
            self.difficulty_of(text), self.skill, text, self.temperature, self.rng
        )
