"""The word-list label guess: the choices a prompt names, and which of them a text earns.

Sentiment-named choices (positive / negative / neutral, ...) follow a lexicon's verdict on the
text; other choices score by how often they are mentioned. Deterministic: ties are broken by a
hash of the simulator's seed and the text.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

from pipeline.simulator.lexicon import (
    CONTRAST_WORDS,
    DIMINISHERS,
    HEDGE_PHRASES,
    HEDGE_WORDS,
    INTENSIFIERS,
    MILD_NEGATIVE_PHRASES,
    MILD_POSITIVE_PHRASES,
    NEGATIVE_NAMES,
    NEGATIVE_PHRASES,
    NEGATIVE_WORDS,
    NEGATORS,
    NEUTRAL_NAMES,
    NOT_AFTER_TOO,
    POSITIVE_NAMES,
    POSITIVE_PHRASES,
    POSITIVE_WORDS,
    STRONG_NEGATIVE_WORDS,
    STRONG_POSITIVE_WORDS,
)

WORD = re.compile(r"[a-z0-9']+")
# Words (apostrophes only inside: "doesn't", not "'quoted'") and clause punctuation.
TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*|[.!?;:,()]")
# Separators inside a choice list: commas, slashes, bars and "or" (with or without a comma).
CHOICE_SEPARATOR = re.compile(r"\s*[,/|]\s*(?:or\s+)?|\s+or\s+")
# "a, b or c" on a line without a colon; the commas are optional only in a question.
BARE_CHOICE_LIST = re.compile(r"(?:[\w-]+\s*,\s*)+[\w-]+,?\s+or\s+[\w-]+")
BARE_QUESTION_CHOICES = re.compile(r"(?:[\w-]+\s*,\s*)*[\w-]+,?\s+or\s+[\w-]+")
# Words before a colon that say a list of choices follows ("Answer with one of: a, b").
CHOICE_CUES = (
    *("one of", "answer", "label", "classify", "categor", "choose", "pick", "select"),
    *("respond", "reply", "option", "choice", "either", "sentiment", "which"),
)
CHOICE_PUNCTUATION = " \t\"'`.,;:!?()[]{}*<>"
# Instructions naming choices are short; skipping long lines (data, documents) keeps the
# search linear in the prompt's size.
MAX_CHOICE_LINE = 400
_Entry = TypeVar("_Entry")
_Value = TypeVar("_Value")


@functools.lru_cache(maxsize=1 << 16)  # words repeat a lot; stemming was the hot spot
def _stem(word: str) -> str:
    """A crude stem, so that "loved", "loves" and "love" meet."""
    for suffix in ("ing", "ed", "es", "s", "ly", "en"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def _first_group_wins(*groups: tuple[Iterable[_Entry], _Value]) -> dict[_Entry, _Value]:
    """Entry -> value; an entry listed in two groups keeps the first group's value."""
    values: dict[_Entry, _Value] = {}
    for entries, value in groups:
        for entry in entries:
            values.setdefault(entry, value)
    return values


# Sentiment weight of a word or phrase in half steps: a plain word is one STEP, a strong word or
# a set phrase two, so that a diminished word ("a bit pricey") can be half a step. 0 marks a
# lukewarm hedge ("fine", "nothing special").
STEP = 2
WORD_WEIGHTS: dict[str, int] = _first_group_wins(
    (STRONG_POSITIVE_WORDS, 2 * STEP),
    (STRONG_NEGATIVE_WORDS, -2 * STEP),
    (POSITIVE_WORDS, STEP),
    (NEGATIVE_WORDS, -STEP),
    (HEDGE_WORDS, 0),
)
PHRASE_WEIGHTS: dict[tuple[str, ...], int] = _first_group_wins(
    (POSITIVE_PHRASES, 2 * STEP),
    (NEGATIVE_PHRASES, -2 * STEP),
    (MILD_POSITIVE_PHRASES, STEP),
    (MILD_NEGATIVE_PHRASES, -STEP),
    (HEDGE_PHRASES, 0),
)
# First word of a phrase -> the lengths of the phrases it starts, longest first.
PHRASE_LENGTHS: dict[str, tuple[int, ...]] = {
    first: tuple(sorted({len(p) for p in PHRASE_WEIGHTS if p[0] == first}, reverse=True))
    for first in {phrase[0] for phrase in PHRASE_WEIGHTS}
}
SENTENCE_ENDS = frozenset(".!?")
CLAUSE_ENDS = frozenset(".!?;:,()")
NEGATION_REACH = 3  # a negator flips sentiment up to this many words after it
DIMINISHER_REACH = 2  # "a bit pricey", "a little too small"
FAR = -100  # the position of a modifier that is out of reach
# Each hedge widens the neutral band around a zero score by a step, up to this many steps.
MAX_HEDGE_STEPS = 2
MOOD_OF_CHOICE = (
    dict.fromkeys(POSITIVE_NAMES, "+")
    | dict.fromkeys(NEGATIVE_NAMES, "-")
    | dict.fromkeys(NEUTRAL_NAMES, "0")
)


def find_choices(text: str) -> tuple[list[str], str] | None:
    """The choice list a prompt names and the prompt without that line, or None.

    The last line naming a list wins, since instructions usually follow the text they are about.
    """
    lines = text.splitlines()
    for index in range(len(lines) - 1, -1, -1):
        choices = _choices_in_line(lines[index])
        if choices:
            return choices, "\n".join(lines[:index] + lines[index + 1 :])
    return None


def _choices_in_line(line: str) -> list[str]:
    if len(line) > MAX_CHOICE_LINE:
        return []
    if ":" in line:
        head, tail = line.rsplit(":", 1)
        lowered = head.lower()
        if " or " not in tail and not any(cue in lowered for cue in CHOICE_CUES):
            return []
    else:
        pattern = BARE_QUESTION_CHOICES if line.rstrip().endswith("?") else BARE_CHOICE_LIST
        found = pattern.search(line)
        if found is None:
            return []
        tail = found.group(0)
    items = [item.strip(CHOICE_PUNCTUATION) for item in CHOICE_SEPARATOR.split(tail.strip())]
    items = [item for item in items if item]
    if not 2 <= len(items) <= 20 or any(len(i) > 40 or i.count(" ") > 2 for i in items):
        return []
    return items


def guess_label(text: str, choices: list[str], seed: int) -> str:
    """The choice a word-list guess picks for `text`; ties are broken by a seeded hash.

    Sentiment-named choices (positive / negative / neutral, ...) follow the lexicon's verdict;
    other choices score by how often they (or their stems) appear in the text.
    """
    if not choices:
        raise ValueError("guess_label needs at least one choice")
    tokens = TOKEN.findall(text.lower().replace("\u2019", "'"))
    mood = _mood(tokens)
    counts = Counter(_stem(token) for token in tokens if token not in CLAUSE_ENDS)
    scores = [_choice_score(choice, mood, counts) for choice in choices]
    best = max(scores)
    tied = [choice for choice, score in zip(choices, scores, strict=True) if score == best]
    if len(tied) == 1:
        return tied[0]
    return tied[_seeded_index(seed, text, len(tied))]


def _mood(tokens: Sequence[str]) -> str:
    """The lexicon's verdict on a tokenized text: "+", "-" or "0".

    Phrases are matched before words. A negator flips what follows it in its clause (to a
    single step: "not great" is a mild complaint), an intensifier adds a step to the next
    word, a diminisher halves it, and after "but" the rest of the sentence counts double.
    The verdict is neutral when the evidence is balanced, and also when it is weak and the
    review hedges: each lukewarm word ("ok", "decent", "nothing special") widens the neutral
    band around zero by a step, up to MAX_HEDGE_STEPS.
    """
    scanner = _MoodScanner(tokens)
    scanner.scan()
    return scanner.verdict()


class _MoodScanner:
    """One left-to-right pass of `_mood` over a tokenized text.

    It holds the running score and hedge count, the weight of the current sentence, and where
    the modifiers that may still reach the next sentiment word were seen.
    """

    # One scanner is made per labelled text; slots keep that and its attribute lookups cheap.
    __slots__ = (
        "diminisher_at",
        "hedges",
        "intensifier_at",
        "negator_at",
        "score",
        "tokens",
        "weight",
    )

    def __init__(self, tokens: Sequence[str]) -> None:
        self.tokens = tokens
        self.score = 0  # positive evidence minus negative evidence, in half steps
        self.hedges = 0
        self.weight = 1  # 2 after a contrast word, until the sentence ends
        self.negator_at = self.intensifier_at = self.diminisher_at = FAR

    def scan(self) -> None:
        """Tallies every phrase and word, longest phrase first, then a word, then a modifier."""
        # The hot loop of the simulator's labelling: it keeps its lookups inline, and calls a
        # method only for the rarer tokens that carry sentiment or modify it.
        tokens, index, count = self.tokens, 0, len(self.tokens)
        while index < count:
            token = tokens[index]
            lengths = PHRASE_LENGTHS.get(token)
            size = self._phrase_at(index, lengths) if lengths is not None else 0
            if size:
                index += size
                continue
            value = WORD_WEIGHTS.get(token)
            if value is not None:
                self._tally(value, index)
                index += 1
                continue
            modifier = _MODIFIERS.get(token)
            index += modifier(self, index) if modifier is not None else 1

    def verdict(self) -> str:
        """The verdict on the tokens scanned so far: "+", "-" or "0"."""
        score = self.score
        band = STEP * min(self.hedges, MAX_HEDGE_STEPS)
        return "+" if score > band else "-" if score < -band else "0"

    def _phrase_at(self, index: int, lengths: tuple[int, ...]) -> int:
        """Tallies the longest phrase starting at `index`: the tokens it covers, or 0 for none."""
        for length in lengths:
            value = PHRASE_WEIGHTS.get(tuple(self.tokens[index : index + length]))
            if value is not None:
                self._tally(value, index)
                return length
        return 0

    def _tally(self, value: int, index: int) -> None:
        """Counts a sentiment word or phrase at `index`, as changed by the modifiers before it."""
        if index - self.negator_at <= NEGATION_REACH:
            value = STEP if value < 0 else -STEP  # "not bad" is mild praise, "not ok" a complaint
        elif value and self.intensifier_at == index - 1:
            value += STEP if value > 0 else -STEP
        if value and index - self.diminisher_at <= DIMINISHER_REACH:
            value //= 2  # exact: every weight is a whole number of steps
        if value:
            self.score += value * self.weight
        else:
            self.hedges += 1

    # Each modifier handler returns how many tokens it covers.

    def _sentence_end(self, index: int) -> int:
        # Ends the clause, and the double weight after a contrast word with it.
        self.weight, self.negator_at, self.diminisher_at = 1, FAR, FAR
        return 1

    def _clause_end(self, index: int) -> int:
        self.negator_at = self.diminisher_at = FAR
        return 1

    def _negator(self, index: int) -> int:
        self.negator_at = index
        return 1

    def _intensifier(self, index: int) -> int:
        self.intensifier_at = index
        return 1

    def _diminisher(self, index: int) -> int:
        self.diminisher_at = index
        return 1

    def _contrast(self, index: int) -> int:
        self.weight, self.negator_at, self.diminisher_at = 2, FAR, FAR
        return 1

    def _too(self, index: int) -> int:
        """A "too" before a word is a complaint ("too wide", even "too soft") of at least a step."""
        if index + 1 < len(self.tokens):
            following = self.tokens[index + 1]
            if following not in CLAUSE_ENDS and following not in NOT_AFTER_TOO:
                self._tally(min(-STEP, WORD_WEIGHTS.get(following) or 0), index)
                return 2
        return 1


# Token -> its modifier handler. A token in two groups is handled as the first group says, so the
# groups are listed in order of precedence.
_MODIFIERS: dict[str, Callable[[_MoodScanner, int], int]] = _first_group_wins(
    (SENTENCE_ENDS, _MoodScanner._sentence_end),
    (CLAUSE_ENDS, _MoodScanner._clause_end),
    (NEGATORS, _MoodScanner._negator),
    (INTENSIFIERS, _MoodScanner._intensifier),
    (DIMINISHERS, _MoodScanner._diminisher),
    (CONTRAST_WORDS, _MoodScanner._contrast),
    (("too",), _MoodScanner._too),
)


def _choice_score(choice: str, mood: str, counts: Mapping[str, int]) -> int:
    name = choice.strip().lower()
    mentions = sum(counts.get(_stem(word), 0) for word in WORD.findall(name))
    return mentions + (1000 if MOOD_OF_CHOICE.get(name) == mood else 0)


def _seeded_index(seed: int, text: str, count: int) -> int:
    digest = hashlib.blake2b(f"{seed}\0{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count
