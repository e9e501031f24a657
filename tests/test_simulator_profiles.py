"""The simulator's model profiles: a stronger model labels right more often, on nested rows.

Unit tests: the answer function is called directly, without sockets, but for the last test,
which checks that `--skill` and the per-request draws reach a running simulator.
"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import polars as pl
import pytest

from pipeline.simulator.answers import guess_label, parse_directives
from pipeline.simulator.config import config_from_args, config_to_argv, flag_parser
from pipeline.simulator.messages import parse_request
from pipeline.simulator.process import SimulatorProcess
from pipeline.simulator.profiles import (
    STATED_MARKER,
    UNKNOWN_SKILL,
    Judge,
    Skills,
    difficulty,
    distractor,
    flip_chance,
    guess_chance,
    parse_skill,
    skill_of,
    stated_confidence,
)
from tests.simulator_helpers import message, post, simulated_label

REPO = Path(__file__).resolve().parents[1]
CHOICES = ["positive", "negative", "neutral"]
INSTRUCTION = "\nAnswer with one word: positive, negative or neutral."
STATED_LINE = f"After your answer, write on a last line of its own `{STATED_MARKER}`."
# Weakest first, as the built-in profiles rank them.
MODELS = (
    "claude-3-haiku-20240307",
    "claude-haiku-4-5-20251001",
    "claude-sonnet-4-5-20250929",
    "claude-opus-4-6",
)


def review_texts() -> list[str]:
    """320 real-looking texts: the sample reviews (their gold labels are not used here)."""
    reviews = pl.read_csv(REPO / "sample_data" / "reviews.csv")
    return [f"Review of {row['product']}: {row['text']}" for row in reviews.iter_rows(named=True)]


TEXTS = review_texts()


def label(
    model: str,
    text: str,
    temperature: float = 0.0,
    *,
    skills: Skills = (),
    rng: random.Random | None = None,
) -> str:
    """`model`'s answer to a labelling prompt about `text` (the simulator's seed 0)."""
    return simulated_label(
        model, text + INSTRUCTION, temperature=temperature, skills=skills, rng=rng
    )


def verdict(text: str) -> str:
    return guess_label(text, CHOICES, 0)


def wrong_rows(model: str) -> set[int]:
    return {i for i, text in enumerate(TEXTS) if label(model, text) != verdict(text)}


# ---------------------------------------------------------------- profiles


@pytest.mark.parametrize(
    ("model", "skill"),
    [
        ("claude-opus-4-6", 0.95),
        ("claude-opus-4-1-20250805", 0.95),
        ("claude-sonnet-4-5-20250929", 0.90),
        ("claude-haiku-4-5-20251001", 0.82),
        ("claude-3-5-haiku-20241022", 0.76),
        ("claude-3-haiku-20240307", 0.70),
        ("claude-unheard-of-9", UNKNOWN_SKILL),
    ],
)
def test_skills_by_model_name(model: str, skill: float) -> None:
    assert skill_of(model) == skill


def test_overrides_come_before_the_profiles_and_the_first_match_wins() -> None:
    overrides = (("haiku-4-5", 0.5), ("haiku", 0.6))
    assert skill_of("claude-haiku-4-5-20251001", overrides) == 0.5
    assert skill_of("claude-3-haiku-20240307", overrides) == 0.6
    assert skill_of("claude-opus-4-6", overrides) == 0.95
    assert parse_skill("claude-3-haiku=0.9") == ("claude-3-haiku", 0.9)
    for bad in ("0.9", "=0.9", "opus=1.5", "opus=much"):
        with pytest.raises(ValueError):
            parse_skill(bad)


def test_skill_flag_reaches_the_config_and_back() -> None:
    args = flag_parser().parse_args(["--skill", "opus=0.5", "--skill", "3-haiku=1"])
    config = config_from_args(args)
    assert config.skills == (("opus", 0.5), ("3-haiku", 1.0))
    assert config_from_args(flag_parser().parse_args(config_to_argv(config))) == config
    with pytest.raises(SystemExit):
        flag_parser().parse_args(["--skill", "opus=2"])


# ---------------------------------------------------------------- temperature 0


def test_an_answer_at_temperature_0_is_fixed() -> None:
    for model in MODELS:
        first = [label(model, text) for text in TEXTS[:60]]
        again = [label(model, text, rng=random.Random(7)) for text in TEXTS[:60]]
        assert first == again


def test_difficulty_is_a_hash_of_the_text_alone() -> None:
    values = [difficulty(text) for text in TEXTS]
    assert all(0.0 <= value < 1.0 for value in values)
    assert values == [difficulty(text) for text in TEXTS]
    assert len(set(values)) == len(values)
    assert 0.4 < sum(values) / len(values) < 0.6  # spread over [0, 1)


def test_wrong_rows_of_a_stronger_model_are_wrong_for_a_weaker_one_too() -> None:
    wrong = [wrong_rows(model) for model in MODELS]
    for weaker, stronger in itertools.pairwise(wrong):
        assert stronger < weaker  # a strict subset: the weaker one misses more


def test_accuracy_against_the_verdict_follows_skill() -> None:
    accuracies = [1 - len(wrong_rows(model)) / len(TEXTS) for model in MODELS]
    assert accuracies == sorted(accuracies) and len(set(accuracies)) == len(accuracies)
    for model, accuracy in zip(MODELS, accuracies, strict=True):
        assert abs(accuracy - skill_of(model)) < 0.06, (model, accuracy)


def test_a_wrong_answer_is_a_valid_choice_other_than_the_verdict() -> None:
    model = MODELS[0]
    for index in wrong_rows(model):
        answer = label(model, TEXTS[index])
        assert answer in CHOICES and answer != verdict(TEXTS[index])
        assert answer == distractor(TEXTS[index], verdict(TEXTS[index]), CHOICES)
    assert distractor("anything", "yes", ["yes"]) == "yes"  # nothing else to pick


def test_skill_1_is_the_verdict_and_skill_0_never_is() -> None:
    for text in TEXTS[:50]:
        assert label("claude-3-haiku-20240307", text, skills=(("haiku", 1.0),)) == verdict(text)
        assert label("claude-opus-4-6", "[[sim:skill=0]] " + text) != verdict(text)


def test_directives_pin_a_rows_difficulty() -> None:
    text = TEXTS[0]
    assert label(MODELS[0], f"[[sim:difficulty=0.69]] {text}") == verdict(text)
    assert label(MODELS[0], f"[[sim:difficulty=0.71]] {text}") != verdict(text)
    assert label(MODELS[3], f"[[sim:difficulty=0.71]] {text}") == verdict(text)
    assert parse_directives("[[sim:difficulty=3]]").difficulty is None  # not a share: ignored


# ---------------------------------------------------------------- above temperature 0


def test_unset_temperature_is_0_and_a_set_one_reaches_the_answer() -> None:
    body = {"model": MODELS[0], "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    assert parse_request(body).prompt.temperature == 0.0
    assert parse_request({**body, "temperature": 0.7}).prompt.temperature == 0.7


def test_identical_requests_vary_above_temperature_0() -> None:
    model, text = MODELS[1], TEXTS[0]
    near = f"[[sim:difficulty={skill_of(model)}]] {text}"  # right at the model's limit
    answers = {label(model, near, temperature=1.0) for _ in range(40)}  # a fresh rng each
    assert answers == set(CHOICES)  # a guess, drawn among the choices (each missed: 1e-7)


def test_answers_vary_more_near_a_models_limit() -> None:
    """Many samples of each text: the borderline ones disagree with their temperature-0
    answer far more often than the easy ones (far below the limit)."""
    rng = random.Random(3)
    for model in MODELS:
        skill = skill_of(model)
        near = [t for t in TEXTS if abs(difficulty(t) - skill) < 0.05]
        far = [t for t in TEXTS if skill - difficulty(t) > 0.3][: len(near) * 3]
        assert near and far
        borderline, easy = share_changed(model, near, rng), share_changed(model, far, rng)
        assert borderline > 0.2 and easy < 0.03 and borderline > 5 * easy, (model, borderline)


def share_changed(model: str, texts: list[str], rng: random.Random, samples: int = 20) -> float:
    """The share of samples at temperature 1 that differ from the answer at 0."""
    fixed = {text: label(model, text) for text in texts}
    changed = sum(
        label(model, text, temperature=1.0, rng=rng) != fixed[text]
        for text in texts
        for _ in range(samples)
    )
    return changed / (samples * len(texts))


def test_the_chance_of_a_flip_grows_with_temperature() -> None:
    chances = [flip_chance(0.8, 0.82, t) for t in (0.0, 0.3, 0.7, 1.0)]
    assert chances[0] == 0.0 and chances == sorted(chances) and chances[-1] <= 0.5
    assert flip_chance(0.8, 0.82, 2.0) == chances[-1]  # chat completions' 2 counts as 1
    assert flip_chance(0.2, 0.82, 1.0) < 0.01


def test_beyond_its_limit_a_model_guesses() -> None:
    """Past the limit a model guesses with certainty at temperature 1 however far past, half
    the time at 0.5, never at 0; it does not flip there (a guess is its only variation)."""
    for d in (0.82, 0.9, 0.999):
        assert guess_chance(d, 0.82, 1.0) == 1.0 and guess_chance(d, 0.82, 0.5) == 0.5
        assert guess_chance(d, 0.82, 0.0) == 0.0 and flip_chance(d, 0.82, 1.0) == 0.0
    assert guess_chance(0.5, 0.82, 1.0) == 0.0  # below the limit it knows: no guess


def agree_share(texts: list[str], skill: float, rng: random.Random) -> float:
    """The share of `texts` whose 3 samples at temperature 1 all give one label."""
    judge = Judge(verdict=lambda _text, choices: choices[0], skill=skill, temperature=1.0, rng=rng)
    return sum(len({judge.label(t, CHOICES) for _ in range(3)}) == 1 for t in texts) / len(texts)


def test_three_samples_beyond_the_limit_agree_a_ninth_of_the_time() -> None:
    """Each sample beyond the limit at temperature 1 is a uniform guess among the 3 choices,
    so all 3 agree with chance 3 * (1/3)**3; far below the limit they almost always agree."""
    skill, rng = 0.5, random.Random(11)
    texts = [f"synthetic row {i}" for i in range(4000)]
    beyond = [t for t in texts if difficulty(t) >= skill]
    assert len(beyond) > 1800
    expected = 3 * (1 / 3) ** 3
    tolerance = 4 * math.sqrt(expected * (1 - expected) / len(beyond))  # 4 standard errors
    assert abs(agree_share(beyond, skill, rng) - expected) < tolerance
    known = [t for t in texts if difficulty(t) < skill - 0.3]
    assert agree_share(known, skill, rng) > 0.9  # each sample flips with chance ~0.012


# ---------------------------------------------------------------- stated confidence


def confidences(model: str) -> tuple[list[int], list[int], list[int]]:
    """`model`'s stated confidence at temperature 0 on the texts it labels right, on those
    it labels wrong, and on those it knows well (d at least 0.2 below its skill)."""
    right: list[int] = []
    wrong: list[int] = []
    well: list[int] = []
    for text in TEXTS:
        reply = simulated_label(model, f"{text}{INSTRUCTION}\n{STATED_LINE}")
        answer, line = reply.split("\n")
        value = int(line.removeprefix("Confidence: "))
        (right if answer == verdict(text) else wrong).append(value)
        if difficulty(text) < skill_of(model) - 0.2:
            well.append(value)
    return right, wrong, well


@pytest.mark.parametrize("model", MODELS[:2])
def test_stated_confidence_is_informative_but_imperfect(model: str) -> None:
    right, wrong, well = confidences(model)
    assert all(0 <= value <= 100 for value in right + wrong)
    assert sum(right) / len(right) > sum(wrong) / len(wrong) + 20
    assert sum(value >= 85 for value in well) / len(well) > 0.9  # sure where it knows
    overconfident = sum(value >= 80 for value in wrong) / len(wrong)
    assert 0.05 < overconfident < 0.4  # some wrong answers still claim 80+


def test_stated_confidence_is_fixed_at_temperature_0_and_jitters_above() -> None:
    text, rng = TEXTS[0], random.Random(5)
    fixed = stated_confidence(0.5, 0.8, text)
    assert all(stated_confidence(0.5, 0.8, text, 0.0, rng) == fixed for _ in range(10))
    hot = {stated_confidence(0.5, 0.8, text, 1.0, rng) for _ in range(30)}
    assert len(hot) > 3 and all(0 <= value <= 100 for value in hot)


def test_a_running_simulator_takes_skills_and_draws_per_request(
    session_sim: SimulatorProcess,
) -> None:
    text = TEXTS[0]
    body = message(text + INSTRUCTION, max_tokens=8, model=MODELS[3])
    with session_sim.started_over(skills=(("opus", 0.0),)) as simulator:
        hopeless = post(simulator.base_url, body).json["content"][0]["text"]
        assert hopeless == distractor(text, verdict(text), CHOICES)
        near = dict(body, temperature=1.0)  # skill 0 and difficulty 0: a guess
        near["messages"] = [{"role": "user", "content": f"{text}{INSTRUCTION}[[sim:difficulty=0]]"}]
        answers = {post(simulator.base_url, near).json["content"][0]["text"] for _ in range(30)}
    assert {verdict(text), hopeless} <= answers  # guesses among the choices, per request
