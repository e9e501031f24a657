"""How an answer becomes a label: `choice` matching (lenient but never a guess) and `text`."""

from __future__ import annotations

import pytest

from pipeline.job.model import ExtractSpec
from pipeline.labels.extract import Extractor, Label

SENTIMENT = ("positive", "negative", "neutral")


def choice(*choices: str) -> Extractor:
    return Extractor(ExtractSpec(kind="choice", column="label", choices=choices))


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        # exact
        ("positive", "positive"),
        ("negative", "negative"),
        ("neutral", "neutral"),
        # case
        ("Positive", "positive"),
        ("NEGATIVE", "negative"),
        ("nEuTrAl", "neutral"),
        # surrounding whitespace and punctuation
        ("Positive.", "positive"),
        ("**negative**", "negative"),
        (" neutral\n", "neutral"),
        ('"positive"', "positive"),
        ("\u201cneutral\u201d", "neutral"),  # curly quotes
        ("'negative'!", "negative"),
        ("(positive)", "positive"),
        ("negative\u2026", "negative"),  # ellipsis
        ("`neutral`", "neutral"),
        ("\t- positive -\t", "positive"),
        # unambiguous prefix
        ("pos", "positive"),
        ("Pos.", "positive"),
        ("neg", "negative"),
        ("neu", "neutral"),
        ("p", "positive"),
        # exactly one choice found as a whole word
        ("The sentiment is negative.", "negative"),
        ("Label: neutral", "neutral"),
        ("Negative\n\nThe reviewer complains about the battery.", "negative"),
        ("I'd say POSITIVE overall", "positive"),
        ("sentiment=positive", "positive"),
    ],
)
def test_choice_matches(answer: str, expected: str) -> None:
    assert choice(*SENTIMENT).extract(answer) == Label(expected, "ok", None)


@pytest.mark.parametrize(
    ("answer", "error_parts"),
    [
        ("ne", ["prefix of several choices (negative, neutral)", "'ne'"]),
        ("n", ["prefix of several choices"]),
        ("positive or negative", ["several choices", "positive, negative"]),
        (
            "Not positive, not negative: neutral.",
            ["several choices", "positive, negative, neutral"],
        ),
        ("mixed", ["none of the choices", "'mixed'"]),
        ("nonnegative", ["none of the choices"]),  # no whole word, not a prefix
        ("positives", ["none of the choices"]),  # "positive" is not a whole word here
        ("The answer is unclear.", ["none of the choices"]),
        ("", ["empty answer"]),
        ("   \n\t", ["empty answer"]),
        ("...", ["empty answer"]),
        ("**", ["empty answer"]),
    ],
)
def test_choice_invalid(answer: str, error_parts: list[str]) -> None:
    label = choice(*SENTIMENT).extract(answer)
    assert label.value is None
    assert label.status == "invalid"
    assert label.error is not None
    for part in error_parts:
        assert part in label.error


def test_invalid_message_shows_at_most_80_characters_of_the_answer() -> None:
    answer = "blah " * 100
    label = choice(*SENTIMENT).extract(answer)
    assert label.status == "invalid" and label.error is not None
    assert repr(answer.strip()[:80]) in label.error
    assert len(label.error) < 160


@pytest.mark.parametrize(
    ("choices", "answer", "expected"),
    [
        # the label is the choice as the job spells it
        (("Positive", "Negative"), "positive", "Positive"),
        (("Positive", "Negative"), "NEG", "Negative"),
        (("YES", "NO"), "yes.", "YES"),
        # multi-word choices
        (("very good", "good", "bad"), "Very good!", "very good"),
        (("very good", "good", "bad"), "good", "good"),  # exact beats prefix
        # a choice that is a prefix of another: exact wins
        (("no", "none"), "No", "no"),
        (("no", "none"), "none", "none"),
        # punctuation in the choice itself is ignored on both sides
        (("A)", "B)"), "b", "B)"),
        (("spam", "ham"), "Spam.", "spam"),
    ],
)
def test_choice_spelling_and_shapes(choices, answer, expected) -> None:
    assert choice(*choices).extract(answer) == Label(expected, "ok", None)


def test_a_choice_inside_a_longer_choice_means_the_longer_one() -> None:
    # "good" is found inside "very good": a five-point scale answered in a sentence
    assert choice("very good", "good", "bad").extract("It was very good") == Label(
        "very good", "ok", None
    )
    assert choice("very good", "good", "bad").extract("It was good") == Label("good", "ok", None)


def test_choice_whole_word_names_several_choices_in_a_sentence() -> None:
    label = choice("yes", "no").extract("Yes and no.")
    assert (label.value, label.status) == (None, "invalid")
    assert label.error is not None
    assert "yes, no" in label.error


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Positive", Label("Positive", "ok", None)),
        ("  hello world \n", Label("hello world", "ok", None)),
        ("line one\nline two", Label("line one\nline two", "ok", None)),
        ("**bold**", Label("**bold**", "ok", None)),  # text keeps punctuation
        ("", Label(None, "invalid", "empty answer")),
        ("  \n\t ", Label(None, "invalid", "empty answer")),
    ],
)
def test_text_kind_strips_and_marks_empty_invalid(answer: str, expected: Label) -> None:
    extractor = Extractor(ExtractSpec(kind="text", column="answer"))
    assert extractor.extract(answer) == expected


def test_extractor_exposes_the_output_column() -> None:
    assert Extractor(ExtractSpec(kind="text", column="summary")).column == "summary"
    assert choice(*SENTIMENT).column == "label"
