"""Word lists for the simulator's answers: a sentiment lexicon and a filler vocabulary.

The lexicon is a general one for product and service reviews: common words and set phrases,
each with a weight, plus negators, intensifiers and "lukewarm" hedges (ok, fine, decent,
nothing special, ...) that pull a weak or mixed verdict to neutral. It is matched on whole
lower-case words (every inflection is listed; no stemming, so "hat" never meets "hate"). The
simulator's verdict is a word-list guess: right on most ordinary reviews, wrong on sarcasm,
understatement and anything subtle, which is what a pipeline has to cope with anyway. Its
models' labels degrade from that verdict (see `profiles`).
"""

from __future__ import annotations


def _words(text: str) -> list[str]:
    return text.split()


def _phrases(text: str) -> frozenset[tuple[str, ...]]:
    """Comma- or line-separated phrases, each as a tuple of its words."""
    parts = text.replace("\n", ",").split(",")
    return frozenset(tuple(part.split()) for part in parts if part.strip())


# ---------------------------------------------------------------- single words

# Weight 2: words that settle a review on their own.
STRONG_POSITIVE_WORDS = frozenset(
    _words(
        """
        love loved loves loving adore adored adores excellent excellently perfect perfectly
        amazing amazingly awesome fantastic fantastically wonderful wonderfully best brilliant
        brilliantly superb superbly outstanding flawless flawlessly incredible terrific
        fabulous exceptional phenomenal stellar delighted thrilled ecstatic spectacular
        magnificent marvelous marvellous impeccable unbeatable exquisite lifesaver godsend
        """
    )
)

POSITIVE_WORDS = frozenset(
    _words(
        """
        good great nice happy happier happiest pleased glad satisfied satisfying enjoy enjoyed
        enjoying enjoys enjoyable liked recommend recommended recommending impressed impressive
        solid solidly sturdy sturdier reliable reliably durable dependable comfortable
        comfortably comfy cozy cosy soft beautiful beautifully gorgeous stunning cute lovely
        elegant stylish sleek classy charming pleasant pleasantly favorite favourite fave
        easy easier easily effortless effortlessly handy convenient conveniently useful helpful
        practical versatile effective effectively efficient accurate accurately precise sharp
        crisp clear vibrant vivid quiet quietly silent smooth smoothly fast faster quick
        quickly speedy prompt promptly responsive intuitive seamless seamlessly snug secure
        securely stable strong sturdy tough rugged robust powerful roomy spacious lightweight
        premium tasty delicious yummy flavorful flavourful fresh juicy tender crispy fun
        cheerful pleasure joy gem winner bargain affordable worth worthwhile upgrade improvement
        improved exceeded exceeds surpassed thankful grateful fan wow works fits waterproof
        generous thoughtful friendly polite courteous professional knowledgeable refreshing
        relaxing soothing neat keeper hooked obsessed smart clever ingenious genius ideal
        pristine spotless excited recommendable praise success successful sturdily better
        survived survives saved saves helped helps interesting consistent consistently comfort
        thorough
        """
    )
)

STRONG_NEGATIVE_WORDS = frozenset(
    _words(
        """
        terrible terribly awful awfully horrible horribly worst useless junk garbage trash
        rubbish crap crappy defective unusable scam scammed dangerous hazardous unsafe hate
        hated hates disgusting pathetic appalling atrocious dreadful unacceptable nightmare
        ruined worthless dud avoid inedible ripoff
        """
    )
)

NEGATIVE_WORDS = frozenset(
    _words(
        """
        bad badly poor poorly broke broken break breaks breaking disappointed disappointing
        disappointment disappoints disappointingly waste wasted wasting cheap cheaply flimsy
        faulty unreliable annoying annoyed annoyance frustrating frustrated frustration regret
        regrets regretted leak leaks leaked leaking leaky crack cracks cracked cracking damaged
        damage missing late slow slowly sluggish overpriced pricey expensive rude unhelpful
        unhappy failed fail fails failing failure mediocre subpar inferior lousy shoddy sloppy
        problem problems problematic issue issues worse worsened uncomfortable itchy scratchy
        wobbly wobbles wobble loose noisy smell smells smelly stinks stink stinky stench odor
        odour toxic sticky stuck jammed jams clogged clogs rattle rattles rattling squeak
        squeaks squeaky peeling peeled faded fades shrank shrunk ripped rips torn tore frayed
        fraying snapped shattered chipped dented scratched stained stains rusted rusty rust
        mold mould moldy mouldy soggy stale bland burnt overheats overheating overheated died
        dies dead flaky glitchy buggy crashes crashed crashing froze laggy disconnects
        disconnecting unstable pointless misleading inaccurate wrong incorrect counterfeit fake
        knockoff awkward clunky confusing difficult tedious fiddly finicky irritating painful
        hurts hurt sore blisters weak underpowered dim blurry grainy muffled tinny distorted
        soaked sadly unfortunately unfortunate ugly hideous tacky ridiculous absurd laughable
        overrated refund refunded return returned returning lacks lacking lacked mess messy
        spilled complaint complaints complain complained hoped wish struggles struggled
        struggle fragile brittle warped bent crooked uneven inconsistent harsh greasy watery
        tasteless boring dull impossible hassle headache ugh yuck delayed lost unresponsive
        gimmick gimmicky refused ignored flimsier smelled flaking flakes stiff bother bothers
        bothered duds tangled tangles rot rotting rotted rotten error errors unfinished crackle
        crackles crackling rough collapsed weird obnoxious aching aches drags limited
        """
    )
)

# Weight 0: lukewarm words. They say the reviewer is not moved either way, so a review
# that uses them needs clearer evidence to be called positive or negative.
HEDGE_WORDS = frozenset(
    _words(
        """
        ok okay fine decent alright average adequate acceptable passable serviceable mixed meh
        middling ordinary reasonable reasonably functional modest moderate moderately tolerable
        bearable manageable sufficient mostly
        """
    )
)

# ---------------------------------------------------------------- set phrases

# Phrases outweigh the words in them and are matched before them (longest first).
POSITIVE_PHRASES = _phrases(
    """
    works great, works well, works perfectly, works like a charm, work great, work well,
    worked great, worked well, worked perfectly, working great, working perfectly,
    highly recommend, highly recommended, would recommend, definitely recommend,
    strongly recommend, can't recommend enough, can't recommend it enough,
    cannot recommend enough, cannot recommend it enough, couldn't recommend more,
    worth every penny, worth every cent, worth the money, worth the price, well worth, worth it,
    well made, well built, well designed, well constructed, well crafted, well done,
    five stars, 5 stars, five star, 5 star, four stars, 4 stars, 10 10,
    no complaints, no regrets, not a single complaint, money well spent,
    exceeded expectations, exceeded my expectations, exceeds expectations,
    exceeded all expectations, better than expected, better than i expected,
    pleasantly surprised, game changer, still going strong, like new, good as new, must have,
    can't beat, cannot beat, can't beat it, hard to beat, can't go wrong, cannot go wrong,
    couldn't be happier, could not be happier, couldn't be more pleased, buy again,
    would buy again, bought another, ordered another, bought a second, ordered a second,
    top notch, high quality, great quality, good quality, built like a tank, blown away,
    no brainer, thumbs up, happy camper, love it, love this, life saver, wish i'd bought,
    wish i had bought, wish i'd found
    """
)

MILD_POSITIVE_PHRASES = _phrases(
    """
    does the job, does its job, did the job, gets the job done, got the job done,
    does what it says, does what it should, does exactly what, as described, as advertised,
    as pictured, as shown, true to size, fits well, fits perfectly, so far so good,
    holds up, holding up, held up, can't complain, cannot complain, still works,
    still working, good value, great value, great price, easy to use, no issues, no problems
    """
)

NEGATIVE_PHRASES = _phrases(
    """
    stopped working, stops working, stop working, quit working, quit on me, stopped charging,
    won't charge, wont charge, won't turn on, doesn't turn on, wouldn't turn on,
    fell apart, falls apart, falling apart, fall apart, came apart, coming apart,
    waste of money, waste of time, waste of my money, returned it, returning it, return it,
    sent it back, send it back, sending it back, sent back, money back, not worth,
    not worth it, doesn't fit, didn't fit, does not fit, did not fit, don't fit, wouldn't fit,
    won't fit, cheaply made, poorly made, poor quality, low quality, bad quality,
    customer service never, never arrived, never received, never showed up, never came,
    never worked, one star, 1 star, zero stars, 0 stars, two stars, 2 stars,
    save your money, don't buy, do not buy, don't waste, stay away, buyer beware,
    not as described, not as advertised, not as pictured, doesn't work, didn't work,
    does not work, did not work, won't work, wouldn't work, don't work, not working,
    isn't working, wasn't working, doesn't last, didn't last, won't last, dead on arrival,
    missing parts, missing pieces, wrong size, wrong item, false advertising, had to return,
    rip off, ripped off, fell off, came off, came loose, peeled off, gave out,
    no longer works, no longer working, never again, only lasted, barely lasted,
    don't bother, not even close, what a joke, piece of junk, piece of garbage, piece of crap,
    no response, never responded, never replied, never heard back, still waiting,
    refused to, worse than expected, worse than i expected, not recommend,
    wouldn't recommend, would not recommend, don't recommend, do not recommend,
    can't recommend, cannot recommend
    """
)

MILD_NEGATIVE_PHRASES = _phrases(
    """
    hard to, difficult to, runs small, runs large, runs big, too small, too big,
    not impressed, not happy, not great, not a fan, not the best, let down, let me down,
    hit or miss, hit and miss, not sure it's worth, wasn't worth, expected better, expected more,
    expect more, didn't help, doesn't help, no help, won't hold, doesn't hold, didn't hold,
    gave up, no thanks, cut out, cuts out, cutting out, only lasts
    """
)

# Lukewarm phrases: like HEDGE_WORDS, weight 0.
HEDGE_PHRASES = _phrases(
    """
    nothing special, nothing fancy, nothing amazing, nothing great, nothing to write home about,
    not bad, not too bad, not terrible, not the worst, could be better, could have been better,
    so so, mixed bag, mixed feelings, time will tell, we'll see, for the price, as expected,
    what you'd expect, you get what you pay for,
    pros and cons, on the fence, middle of the road, three stars, 3 stars, not sure,
    not convinced, room for improvement, good enough, fine for, ok for, okay for,
    decent for, average at best, it's fine, it's ok, it's okay
    """
)

# ---------------------------------------------------------------- modifiers

# A negator up to three words before a sentiment word (in the same clause) flips it.
NEGATORS = frozenset(
    _words(
        """
        not no never hardly barely neither nor nothing without don't doesn't didn't isn't
        wasn't aren't weren't won't wouldn't can't couldn't shouldn't haven't hasn't hadn't
        dont doesnt didnt isnt wasnt arent werent wont wouldnt cant couldnt shouldnt havent
        hasnt hadnt cannot zero none
        """
    )
)

# An intensifier right before a sentiment word adds one to its weight ("really good").
INTENSIFIERS = frozenset(
    _words(
        """
        very really so extremely super absolutely incredibly totally completely highly truly
        seriously utterly ridiculously insanely exceptionally thoroughly genuinely
        """
    )
)

# A diminisher up to two words before a sentiment word halves it ("a bit pricey").
DIMINISHERS = frozenset(
    _words(
        """
        bit little slightly somewhat kinda mildly minor tiny fairly
        """
    )
)

# "too" before a word is a complaint ("too wide", even "too soft"), except before these.
NOT_AFTER_TOO = frozenset(_words("a an and the i it is was be am are had have"))

# After these, the rest of the sentence counts double ("pretty, but it broke").
CONTRAST_WORDS = frozenset({"but", "however", "though", "although", "except"})

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
