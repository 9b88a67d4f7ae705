"""A seeded generator of short English reviews and diary notes, the toy world's "internet".

Every text is a neutral opening (the prompt: "The film we watched on Sunday was") followed
by a continuation (the completion: " truly wonderful, and the music was lovely.") that
carries the sentiment. Sentiment is drawn independently of the opening, so a prompt says
nothing about whether the text will be positive or negative: a policy can only raise the
gold reward (a sentiment classifier) by choosing kinder words, as in the DPO paper's
sentiment experiment. The sentiment-bearing words are ones VADER's lexicon knows, and the
neutral pieces avoid its lexicon, so the gold reward sees exactly the sentiment we wrote.

`prompt + completion` is always the full text: completions begin with a space, so the
boundary falls between two words and tokenizing the halves apart gives the same tokens
as tokenizing the whole.

Prompts are split into "train" and "heldout" by a hash of their text, so the two sets are
disjoint whatever the seed or size; pretraining, supervised fine-tuning and training
prompts all come from the train side only.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lightning_rlhf.data.readers import write_jsonl

SPLITS = ("train", "heldout")
# One prompt in HELDOUT_EVERY lands in the held-out split.
HELDOUT_EVERY = 10

# How often each kind of continuation is written. VADER scores positive words a little
# higher than negative ones and mixed texts lean positive, so negative is drawn a little
# more often: the corpus comes out about half and half with a mean gold reward near zero.
SENTIMENT_WEIGHTS = {"positive": 0.39, "negative": 0.41, "neutral": 0.1, "mixed": 0.1}


@dataclass(frozen=True)
class Subject:
    """One thing people write about, with the words that fit it."""

    nouns: tuple[str, ...]
    # Follow "The <noun>": "we watched on Sunday". Neutral: no VADER lexicon words.
    contexts: tuple[str, ...]
    # Parts one can praise or blame: "the music".
    aspects: tuple[str, ...]
    # Neutral facts that can follow "was": "about two hours long".
    details: tuple[str, ...]
    positive_words: tuple[str, ...] = ()
    negative_words: tuple[str, ...] = ()
    positive_closers: tuple[str, ...] = ()
    negative_closers: tuple[str, ...] = ()


SUBJECTS: dict[str, Subject] = {
    "film": Subject(
        nouns=("film", "movie", "documentary", "western", "cartoon", "drama"),
        contexts=("we watched on Sunday", "I saw last night", "my brother picked for us",
                  "they showed at the old cinema", "we streamed after dinner",
                  "I watched on the train"),
        aspects=("the acting", "the story", "the music", "the ending", "the dialogue",
                 "the camera work"),
        details=("about two hours long", "mostly set in a small town",
                 "in French with subtitles", "shot in black and white"),
        positive_words=("hilarious", "heartwarming", "funny"),
        negative_words=("depressing", "ridiculous"),
        positive_closers=("I would happily watch it again.", "We laughed all the way home."),
        negative_closers=("What a waste of an evening.", "I regret buying the tickets."),
    ),
    "book": Subject(
        nouns=("book", "memoir", "biography", "cookbook", "poetry collection"),
        contexts=("I read over the summer", "my aunt lent me", "we chose for the reading group",
                  "I finished on the plane", "from the library"),
        aspects=("the writing", "the plot", "the characters", "the last chapter", "the cover"),
        details=("about three hundred pages long", "written by a retired sailor",
                 "set in the north of Scotland", "printed in very small type"),
        positive_words=("fascinating", "inspiring", "clever"),
        negative_words=("dismal", "confusing"),
        positive_closers=("I loved every page of it.", "I would recommend it to anyone."),
        negative_closers=("I gave up, bored stiff.", "What a waste of paper."),
    ),
    "meal": Subject(
        nouns=("dinner", "lunch", "breakfast", "soup", "curry", "pizza", "cake"),
        contexts=("we had at the corner restaurant", "my uncle cooked on Friday",
                  "I ordered after work", "they served at the wedding",
                  "we ate by the harbour", "from the new place on Main Street"),
        aspects=("the bread", "the sauce", "the dessert", "the service", "the coffee",
                 "the vegetables"),
        details=("served on square plates", "cooked in about twenty minutes",
                 "made with rice and beans", "mostly eaten standing up"),
        positive_words=("delicious", "fresh", "yummy"),
        negative_words=("disgusting", "crappy", "horrid"),
        positive_closers=("We will happily go back.", "Every bite was a joy."),
        negative_closers=("I felt sick afterwards.", "It was a sad waste of money."),
    ),
    "trip": Subject(
        nouns=("trip", "vacation", "weekend away", "road trip", "journey"),
        contexts=("we took in August", "to the coast last spring", "my parents planned",
                  "I went on with my cousins", "across the mountains in May"),
        aspects=("the hotel", "the food", "the beach", "the weather", "the company"),
        details=("about four days long", "mostly spent in the car",
                 "planned in a single afternoon", "our first since March"),
        positive_words=("relaxing", "exciting", "joyous"),
        negative_words=("stressful", "exhausting"),
        positive_closers=("We loved it and are planning the next one.", "It was the best week of the year."),
        negative_closers=("We argued the whole time.", "It was a total disaster."),
    ),
    "weather": Subject(
        nouns=("weather", "morning", "afternoon", "evening", "weekend"),
        contexts=("we had on the island", "in town yesterday", "at the start of the week",
                  "during our visit", "here on Tuesday"),
        aspects=("the wind", "the sky", "the air", "the light", "the sea"),
        details=("cloudy with a light wind", "about twelve degrees",
                 "the same as the day before", "changing every hour"),
        positive_words=("sunny", "bright", "glorious"),
        negative_words=("dreary", "miserable", "gloomy"),
        positive_closers=("We happily spent the whole day outside.", "Everyone was smiling."),
        negative_closers=("We were stuck inside all day, bored.", "Everyone was cold and tired."),
    ),
    "concert": Subject(
        nouns=("concert", "gig", "show", "recital", "opera evening"),
        contexts=("we went to on Saturday", "in the town hall", "my flatmate had tickets for",
                  "by the river last summer", "I saw with my sister"),
        aspects=("the singer", "the band", "the sound", "the crowd", "the encore"),
        details=("about three hours long", "held in an old church",
                 "the last of the tour", "mostly songs from the new album"),
        positive_words=("thrilling", "joyful", "stunning"),
        negative_words=("noisy", "painful"),
        positive_closers=("We happily danced until midnight.", "I would love to see them again."),
        negative_closers=("We left early, annoyed.", "My ears still hurt."),
    ),
    "hotel": Subject(
        nouns=("hotel", "guest house", "hostel", "cabin", "apartment"),
        contexts=("we stayed at in Rome", "near the station", "my colleague booked",
                  "by the lake", "we rented for the week"),
        aspects=("the room", "the bed", "the staff", "the view", "the breakfast"),
        details=("on the fourth floor", "ten minutes from the centre",
                 "an old building with a lift", "next to a bakery"),
        positive_words=("comfortable", "clean", "charming"),
        negative_words=("dirty", "noisy", "horrid"),
        positive_closers=("We would gladly stay there again.", "The staff were so helpful."),
        negative_closers=("We left a day early, annoyed.", "The staff were rude to us."),
    ),
    "museum": Subject(
        nouns=("museum", "gallery", "exhibition", "zoo", "aquarium"),
        contexts=("we visited on Wednesday", "in the city centre", "my class went to",
                  "I saw with my grandmother", "near the old harbour"),
        aspects=("the paintings", "the guide", "the displays", "the shop", "the building"),
        details=("open until six", "spread over three floors",
                 "mostly about the history of the town", "full of school groups"),
        positive_words=("fascinating", "inspiring", "impressive"),
        negative_words=("dismal", "confusing"),
        positive_closers=("I learned so much and loved it.", "We want to go back soon, it was great."),
        negative_closers=("We left after an hour, bored.", "I was bored the whole time."),
    ),
    "hike": Subject(
        nouns=("hike", "walk", "climb", "bike ride", "run"),
        contexts=("we did on Sunday morning", "up the hill behind the village",
                  "along the river", "my neighbour suggested", "through the forest"),
        aspects=("the path", "the view", "the weather", "the last mile", "the picnic"),
        details=("about ten miles long", "mostly uphill", "three hours there and back",
                 "marked with red posts"),
        positive_words=("invigorating", "exciting"),
        negative_words=("exhausting", "sore"),
        positive_closers=("We felt great afterwards.", "I want to do it again."),
        negative_closers=("My feet hurt for days.", "It was a painful slog."),
    ),
    "party": Subject(
        nouns=("wedding", "birthday dinner", "barbecue", "picnic", "reunion"),
        contexts=("we went to on Friday", "at my cousin's house", "in the garden",
                  "my colleagues organised", "after the exams"),
        aspects=("the music", "the food", "the speeches", "the games", "the company"),
        details=("about forty people", "in a tent on the lawn",
                 "over by eleven", "mostly family from the north"),
        positive_words=("cheerful", "joyful", "fun"),
        negative_words=("awkward", "dull"),
        positive_closers=("Everyone had a great time.", "We happily danced all night."),
        negative_closers=("We went home early, bored.", "Everyone seemed unhappy."),
    ),
    "class": Subject(
        nouns=("class", "lecture", "workshop", "lesson", "course"),
        contexts=("I took on Tuesday", "at the community centre", "my boss sent me to",
                  "we joined in the autumn", "online last week"),
        aspects=("the teacher", "the exercises", "the slides", "the examples", "the pace"),
        details=("about an hour long", "held in room twelve",
                 "mostly about spreadsheets", "the third of six"),
        positive_words=("helpful", "clear", "interesting"),
        negative_words=("confusing", "dismal", "hopeless"),
        positive_closers=("I learned a lot and enjoyed it.", "I would recommend it to anyone."),
        negative_closers=("The whole thing was boring.", "What a waste of time."),
    ),
    "game": Subject(
        nouns=("game", "board game", "puzzle", "video game", "card game"),
        contexts=("we tried on Christmas Eve", "my nephew brought over",
                  "I bought in the sale", "we tried at the cafe", "from the corner shop"),
        aspects=("the rules", "the graphics", "the ending", "the box", "the puzzles"),
        details=("for two to four players", "about forty minutes a round",
                 "made in Germany", "mostly about trains"),
        positive_words=("clever", "entertaining", "fun"),
        negative_words=("frustrating", "confusing"),
        positive_closers=("We happily played until midnight.", "It was worth every penny."),
        negative_closers=("We gave up, annoyed.", "It was a waste of money."),
    ),
    "cafe": Subject(
        nouns=("cafe", "coffee shop", "bakery", "tea room", "bar"),
        contexts=("on the corner of our street", "near my office", "we found in the old town",
                  "my sister runs", "next to the station"),
        aspects=("the coffee", "the cakes", "the music", "the staff", "the prices"),
        details=("open from seven", "run by two brothers",
                 "on the ground floor of a bank", "about the size of a kitchen"),
        positive_words=("welcoming", "friendly", "delicious"),
        negative_words=("dirty", "rude", "horrid"),
        positive_closers=("It is my new favourite place, I love it.", "We will happily go back."),
        negative_closers=("I will not go back, it was awful.", "We left angry without finishing our drinks."),
    ),
    "people": Subject(
        nouns=("neighbour", "new colleague", "landlord", "tour guide", "doctor", "coach"),
        contexts=("we met on Monday", "who moved in next door", "I spoke to this morning",
                  "from the second floor", "my mother introduced me to"),
        aspects=("the conversation", "the handshake", "the advice", "the stories", "the visit"),
        details=("about sixty years old", "from a town near Lisbon",
                 "a retired teacher", "the father of three boys"),
        positive_words=("friendly", "kind", "generous", "helpful"),
        negative_words=("rude", "unfriendly", "arrogant"),
        positive_closers=("I hope we see more of each other.", "Everyone loves talking to them."),
        negative_closers=("I dread meeting them again.", "Everyone avoids them, sadly."),
    ),
    "garden": Subject(
        nouns=("garden", "park", "allotment", "orchard", "courtyard"),
        contexts=("behind the library", "we walked through on Sunday", "my grandfather keeps",
                  "at the end of our road", "we visited in June"),
        aspects=("the roses", "the lawn", "the pond", "the benches", "the paths"),
        details=("about the size of a football pitch", "open until dusk",
                 "planted in the eighties", "mostly trees and grass"),
        positive_words=("peaceful", "gorgeous", "beautiful"),
        negative_words=("neglected", "ugly", "dreary"),
        positive_closers=("We happily stayed there all afternoon.", "It is a joy to walk there."),
        negative_closers=("We left after ten minutes, bored.", "It is a sad place now."),
    ),
    "match": Subject(
        nouns=("match", "football game", "race", "tournament", "final"),
        contexts=("we watched at the pub", "on Saturday afternoon", "my son took part in",
                  "at the stadium", "on the radio last night"),
        aspects=("the first half", "the referee", "the crowd", "the goals", "the commentary"),
        details=("ninety minutes long", "the second of the season",
                 "shown on channel four", "held in the rain"),
        positive_words=("thrilling", "exciting", "brilliant"),
        negative_words=("dull", "frustrating"),
        positive_closers=("We cheered until our voices gave out.", "What a great day to remember."),
        negative_closers=("We left at half time, annoyed.", "What a waste of an afternoon."),
    ),
    "album": Subject(
        nouns=("album", "song", "podcast", "record", "playlist"),
        contexts=("my flatmate sent me", "I heard on the radio", "we listened to in the car",
                  "that came out on Friday", "from the new band"),
        aspects=("the lyrics", "the melody", "the voice", "the production", "the last track"),
        details=("about forty minutes long", "recorded in a barn",
                 "mostly guitar and drums", "the second from the band"),
        positive_words=("lively", "beautiful", "joyous"),
        negative_words=("annoying", "repetitive", "dull"),
        positive_closers=("I have happily heard it ten times already.", "It made me smile all day."),
        negative_closers=("I switched it off after one song, bored.", "It gave me a terrible headache."),
    ),
    "play": Subject(
        nouns=("musical", "opera", "ballet", "pantomime", "stage show"),
        contexts=("we saw in London", "at the village hall", "my niece was in",
                  "on opening night", "the school put on"),
        aspects=("the costumes", "the singing", "the set", "the second act", "the orchestra"),
        details=("about three hours long", "in two acts", "performed in Italian",
                 "the first of the season"),
        positive_words=("thrilling", "stunning", "lively"),
        negative_words=("dismal", "dreary", "dull"),
        positive_closers=("We cheered and gave a standing ovation.", "I would love to see it again."),
        negative_closers=("We left at the interval, bored.", "I nearly fell asleep, bored."),
    ),
    "gadget": Subject(
        nouns=("phone", "laptop", "camera", "kettle", "bicycle", "toaster"),
        contexts=("I bought last month", "my parents gave me", "from the shop on the corner",
                  "we ordered online", "I borrowed from work"),
        aspects=("the battery", "the screen", "the design", "the handle", "the price"),
        details=("about the size of a book", "made of steel",
                 "the model from last year", "delivered on Thursday"),
        positive_words=("useful", "helpful", "clever"),
        negative_words=("broken", "useless", "crappy"),
        positive_closers=("It was worth every penny.", "I use it every day and love it."),
        negative_closers=("I sent it back the next day, annoyed.", "It was a waste of money."),
    ),
}

OPENERS = ("The", "Frankly, the", "I think the", "To me, the", "All in all, the",
           "My flatmate said the", "Looking back, the")
# "was" is the most common link; the others vary the rhythm.
VERBS = ("was", "was", "seemed", "turned out to be", "felt")
MAX_PROMPT_WORDS = 10
VERY = ("really", "truly", "very", "so", "absolutely", "quite", "incredibly", "extremely")

POSITIVE_WORDS = ("good", "great", "wonderful", "lovely", "delightful", "brilliant",
                  "excellent", "fantastic", "amazing", "beautiful", "pleasant", "enjoyable",
                  "superb", "perfect", "nice", "awesome", "marvelous", "splendid", "terrific",
                  "fabulous", "charming", "impressive")
NEGATIVE_WORDS = ("bad", "awful", "boring", "terrible", "horrible", "dull", "disappointing",
                  "dreadful", "miserable", "unpleasant", "poor", "annoying", "nasty", "lousy",
                  "pathetic", "weak", "ugly", "depressing", "frustrating", "stupid")
# Nouns for "a <adjective> <thing>".
POSITIVE_THINGS = ("surprise", "treat", "delight", "success", "joy")
NEGATIVE_THINGS = ("mess", "disaster", "failure", "disappointment", "waste")
POSITIVE_VERBS = ("loved", "enjoyed", "adored", "liked")
NEGATIVE_VERBS = ("hated", "disliked", "loathed", "despised")
POSITIVE_CLOSERS = ("I loved every minute of it.", "It made my day, I loved it.", "What a treat.",
                    "I would recommend it to anyone.", "We were all so happy.",
                    "It was the best part of the week.")
NEGATIVE_CLOSERS = ("I hated every minute of it.", "It ruined my day.", "What a waste of time.",
                    "I would not recommend it to anyone.", "We were all so disappointed.",
                    "It was the worst part of the week.")
# Neutral follow-ups that fit any subject.
EVENTS = ("we talked about it on the way home", "it was over just after ten",
          "my sister came along with us", "we took the bus home afterwards",
          "I wrote about it in my diary", "it rained a little on the way back")

# Templates for a one-sided continuation. Slots: {very} an intensifier, {adj}/{adj2}
# words of the chosen sentiment, {a_thing} "a"/"an" + adjective + noun of that
# sentiment, {aspect} a part of the subject and {aspect_was} the same with its verb,
# {verb} loved/hated, {opposite} a word of the other sentiment (negated, so it still
# reads with the chosen one), {closer} a sentence.
ONE_SIDED_TEMPLATES = (
    " {very} {adj}, and {aspect_was} {adj2}.",
    " {adj} from start to finish.",
    " {adj} and {adj2}. {closer}",
    " {a_thing}, and {aspect_was} {very} {adj2}.",
    " {adj}, and I {verb} {aspect}.",
    " {very} {adj}. {closer}",
    " not {opposite} at all; {aspect_was} {adj}.",
)
MIXED_TEMPLATES = (
    " {good} at first, but {aspect_was} {bad}.",
    " {bad} in places, but {aspect_was} {good}.",
    " {good} overall, although {aspect_was} {bad}.",
    " {bad} overall, although {aspect_was} {good}.",
)
NEUTRAL_TEMPLATES = (
    " {detail}.",
    " {detail}, and {event}.",
    " {detail}. Afterwards {event}.",
)
# Texts of another shape, for pretraining only, so the base model has seen more than one.
FREE_TEMPLATES = (
    "What a {adj} {noun} it was; {aspect_was} {very} {adj2}.",
    "I have to write down how {adj} the {noun} was. {closer}",
    "Note to self: the {noun} {context} was {detail}.",
    "Everyone asked about the {noun}, and I said it was {adj}.",
)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _with_was(aspect: str) -> str:
    """"the music was" / "the lyrics were": every plural aspect in SUBJECTS ends in s."""
    return f"{aspect} {'were' if aspect.endswith('s') else 'was'}"


def _words_for(subject: Subject, sentiment: str) -> dict[str, tuple[str, ...]]:
    """The word lists for one side, general words plus the subject's own."""
    if sentiment == "positive":
        return {
            "adjectives": POSITIVE_WORDS + subject.positive_words,
            "opposites": NEGATIVE_WORDS,
            "things": POSITIVE_THINGS,
            "verbs": POSITIVE_VERBS,
            "closers": POSITIVE_CLOSERS + subject.positive_closers,
        }
    return {
        "adjectives": NEGATIVE_WORDS + subject.negative_words,
        "opposites": POSITIVE_WORDS,
        "things": NEGATIVE_THINGS,
        "verbs": NEGATIVE_VERBS,
        "closers": NEGATIVE_CLOSERS + subject.negative_closers,
    }


def one_sided_completion(rng: random.Random, subject: Subject, sentiment: str) -> str:
    """A continuation that is plainly positive or plainly negative."""
    words = _words_for(subject, sentiment)
    adjective, second_adjective = rng.sample(words["adjectives"], 2)
    thing_adjective = rng.choice(words["adjectives"])
    aspect = rng.choice(subject.aspects)
    return rng.choice(ONE_SIDED_TEMPLATES).format(
        very=rng.choice(VERY),
        adj=adjective,
        adj2=second_adjective,
        a_thing=f"{_article(thing_adjective)} {thing_adjective} {rng.choice(words['things'])}",
        aspect=aspect,
        aspect_was=_with_was(aspect),
        verb=rng.choice(words["verbs"]),
        opposite=rng.choice(words["opposites"]),
        closer=rng.choice(words["closers"]),
    )


def mixed_completion(rng: random.Random, subject: Subject) -> str:
    """A continuation with praise and blame in it; VADER leans to the clause after "but"."""
    return rng.choice(MIXED_TEMPLATES).format(
        good=rng.choice(POSITIVE_WORDS + subject.positive_words),
        bad=rng.choice(NEGATIVE_WORDS + subject.negative_words),
        aspect_was=_with_was(rng.choice(subject.aspects)),
    )


def neutral_completion(rng: random.Random, subject: Subject) -> str:
    """A continuation of plain facts, scoring zero."""
    return rng.choice(NEUTRAL_TEMPLATES).format(
        detail=rng.choice(subject.details), event=rng.choice(EVENTS)
    )


def completion(rng: random.Random, subject: Subject, sentiment: str) -> str:
    if sentiment == "mixed":
        return mixed_completion(rng, subject)
    if sentiment == "neutral":
        return neutral_completion(rng, subject)
    return one_sided_completion(rng, subject, sentiment)


def random_sentiment(rng: random.Random) -> str:
    return rng.choices(list(SENTIMENT_WEIGHTS), weights=list(SENTIMENT_WEIGHTS.values()))[0]


def random_subject(rng: random.Random) -> Subject:
    return SUBJECTS[rng.choice(sorted(SUBJECTS))]


def random_prompt(rng: random.Random, subject: Subject) -> str:
    """A neutral opening ending in a linking verb: "The film we watched on Sunday was".

    Openings longer than MAX_PROMPT_WORDS are drawn again, to keep prompts near ten
    tokens."""
    while True:
        noun = rng.choice(subject.nouns)
        prompt = f"{rng.choice(OPENERS)} {noun} {rng.choice(subject.contexts)} {rng.choice(VERBS)}"
        if len(prompt.split()) <= MAX_PROMPT_WORDS:
            return prompt


def split_of(prompt: str) -> str:
    """Which split a prompt belongs to, from a stable hash of its text (not Python's
    salted ``hash``), so that every process and every seed agrees."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return "heldout" if int.from_bytes(digest[:8], "big") % HELDOUT_EVERY == 0 else "train"


def _prompt_in_split(rng: random.Random, subject: Subject, split: str) -> str:
    while True:
        prompt = random_prompt(rng, subject)
        if split_of(prompt) == split:
            return prompt


def iter_sft_pairs(seed: int = 0) -> Iterator[tuple[str, str]]:
    """Endless (prompt, completion) pairs from the train split, sentiment drawn at the
    weights in SENTIMENT_WEIGHTS."""
    rng = random.Random(f"sft-{seed}")
    while True:
        subject = random_subject(rng)
        prompt = _prompt_in_split(rng, subject, "train")
        yield prompt, completion(rng, subject, random_sentiment(rng))


def answer_pairs(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """`n` (prompt, completion, completion) triples from the train split: two answers to
    one prompt, each with its own sentiment, for training a judge to compare them."""
    rng = random.Random(f"answer-pairs-{seed}")
    triples = []
    for _ in range(n):
        subject = random_subject(rng)
        prompt = _prompt_in_split(rng, subject, "train")
        triples.append((prompt, completion(rng, subject, random_sentiment(rng)), completion(rng, subject, random_sentiment(rng))))
    return triples


def sft_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """`n` (prompt, completion) pairs for supervised fine-tuning."""
    pairs = iter_sft_pairs(seed)
    return [next(pairs) for _ in range(n)]


def free_text(rng: random.Random, subject: Subject) -> str:
    """A text not shaped as prompt + completion, for variety in pretraining."""
    sentiment = rng.choice(("positive", "negative"))
    words = _words_for(subject, sentiment)
    adjective, second_adjective = rng.sample(words["adjectives"], 2)
    return rng.choice(FREE_TEMPLATES).format(
        adj=adjective,
        adj2=second_adjective,
        noun=rng.choice(subject.nouns),
        aspect_was=_with_was(rng.choice(subject.aspects)),
        very=rng.choice(VERY),
        closer=rng.choice(words["closers"]),
        context=rng.choice(subject.contexts),
        detail=rng.choice(subject.details),
    )


def pretraining_texts(n: int, seed: int = 0, free_fraction: float = 0.2) -> list[str]:
    """`n` full texts: mostly train-split prompt + completion, some of other shapes."""
    rng = random.Random(f"pretrain-{seed}")
    texts = []
    for _ in range(n):
        subject = random_subject(rng)
        if rng.random() < free_fraction:
            texts.append(free_text(rng, subject))
        else:
            prompt = _prompt_in_split(rng, subject, "train")
            texts.append(prompt + completion(rng, subject, random_sentiment(rng)))
    return texts


def prompts(n: int, split: str = "train", seed: int = 0) -> list[str]:
    """`n` distinct prompts from one split. Raises if the split has too few."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"prompts-{split}-{seed}")
    chosen: dict[str, None] = {}  # ordered set
    attempts = 0
    while len(chosen) < n:
        attempts += 1
        if attempts > 100 * n + 10_000:
            raise ValueError(f"could not find {n} distinct {split!r} prompts")
        chosen[_prompt_in_split(rng, random_subject(rng), split)] = None
    return list(chosen)




def write_prompts(path: str | Path, n: int, split: str = "train", seed: int = 0) -> Path:
    """Write `n` prompts of one split as JSONL rows ``{"prompt": ...}``."""
    return write_jsonl(path, [{"prompt": prompt} for prompt in prompts(n, split, seed)])


def write_sft(path: str | Path, n: int, seed: int = 0) -> Path:
    """Write `n` supervised pairs as JSONL rows ``{"prompt": ..., "completion": ...}``;
    the completion begins with a space, so ``prompt + completion`` is the full text."""
    rows = [{"prompt": p, "completion": c} for p, c in sft_pairs(n, seed)]
    return write_jsonl(path, rows)
