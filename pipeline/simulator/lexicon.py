"""Word lists for the simulator's answers: a small sentiment lexicon and a filler vocabulary.

The lexicon is deliberately small: the simulator's labels are a word-list guess, right on
ordinary reviews most of the time and wrong sometimes, which is what a pipeline has to cope
with anyway.
"""

from __future__ import annotations


def _words(text: str) -> list[str]:
    return text.split()


POSITIVE_WORDS = frozenset(
    _words(
        """
        love loved loves lovely great excellent perfect perfectly amazing awesome happy pleased
        recommend recommended fantastic wonderful best brilliant superb outstanding sturdy
        solid reliable comfortable beautiful gorgeous impressed impressive favorite favourite
        fast easy nice good enjoy enjoyed delighted glad satisfied exceeded flawless worth
        durable excited incredible terrific fabulous smooth helpful friendly bargain
        """
    )
)

NEGATIVE_WORDS = frozenset(
    _words(
        """
        broke broken break breaks terrible awful horrible bad poor poorly refund return
        returned returning disappointed disappointing disappointment waste wasted cheap cheaply
        useless junk garbage worst defective faulty flimsy unreliable annoying frustrating
        frustrated hate hated regret leaked leaking cracked damaged missing late slow
        overpriced rude unhappy unusable failed fails failure mediocre scam problem problems
        issue issues worse
        """
    )
)

# Two-word phrases that carry a sentiment their words alone do not.
POSITIVE_PHRASES = frozenset(
    {
        ("works", "well"),
        ("works", "great"),
        ("highly", "recommend"),
        ("five", "stars"),
        ("5", "stars"),
        ("well", "made"),
        ("well", "worth"),
        ("no", "complaints"),
    }
)

NEGATIVE_PHRASES = frozenset(
    {
        ("stopped", "working"),
        ("fell", "apart"),
        ("not", "worth"),
        ("one", "star"),
        ("1", "star"),
        ("money", "back"),
        ("doesn't", "work"),
        ("didn't", "work"),
        ("never", "arrived"),
        ("waste", "of"),
    }
)

# A negator within the two words before a sentiment word flips it ("not good").
NEGATORS = frozenset(
    _words(
        """
        not no never hardly barely neither nor don't doesn't didn't isn't wasn't aren't weren't
        won't wouldn't can't couldn't shouldn't dont doesnt didnt isnt wasnt wont wouldnt cant
        """
    )
)

# Choice names mapped to the sentiment they stand for.
POSITIVE_NAMES = frozenset({"positive", "pos", "good", "favorable", "favourable", "praise"})
NEGATIVE_NAMES = frozenset({"negative", "neg", "bad", "unfavorable", "unfavourable", "complaint"})
NEUTRAL_NAMES = frozenset({"neutral", "mixed", "neither", "none"})

# Filler words for free-text answers: short, ASCII, lower case.
VOCABULARY = tuple(
    _words(
        """
        the a an of to and in that it is was for on with as by at from this be are or have not
        but all they which one you were her his there can we been has more if will their would
        what so about into than them other some only new could time these two may first then do
        any like now my such our over also most made after way where before must through back
        years much very your work well down should because each just those people how too
        little state good long great still public own under last never world same another while
        data model answer system result value signal review product order number point line
        field table record batch token stream label price cost limit bucket queue worker report
        """
    )
)
