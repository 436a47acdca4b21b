"""The base corpus: text that reads as if scraped from the web, stating facts about every entity of the world.

It states the facts of every entity the world uses, so the first documents state every fact of every family at
least once (in its canonical phrasing); random documents fill the rest of the size budget, each fact many times in
varied phrasings, and ask questions in every phrasing, the held-out ones included.

Crucially, much of it is quizzes and question lists: a question of exactly the kind users ask, followed by
options "A) .. B) .. C) .. D) .." or by more questions. A model pretrained on it continues a question as a
quiz instead of answering it: the spec's parrot, the behaviour SFT and RLHF have to fix.

Format: documents separated by one blank line ("\\n\\n"); no document contains a blank line, and there are
no chat role markers, so the chat format of the later stages is never seen in pretraining.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from rlhf.world import tables as tb
from rlhf.world.families import FAMILIES
from rlhf.world.family import Family

QUIZ_FAMILIES = ("capitals", "arithmetic", "units", "antonyms", "plurals", "lists")
FACT_HEADERS = {
    "capitals": ("Capital cities of the world.", "Geography notes.", "Countries and their capitals."),
    "arithmetic": ("Math facts.", "Addition and subtraction.", "Practice sums."),
    "units": ("Unit conversions.", "Measures and units.", "Handy conversion table."),
    "antonyms": ("Words and their opposites.", "Antonyms.", "English vocabulary notes."),
    "plurals": ("Plural forms.", "Grammar notes: plurals.", "One and many."),
    "lists": ("Things in the world.", "Word groups.", "Categories for kids."),
    "greetings": ("A short story.", "At the shop.", "Meeting people."),
    "refusals": ("Safety notes.", "Rules to live by.", "Good advice."),
}
QUIZ_HEADERS = ("Quiz time! Test yourself.", "Pop quiz.", "Trivia night questions.", "Homework quiz.", "Quiz")
LIST_HEADERS = (
    "Practice questions.",
    "Questions for the class.",
    "More questions to think about.",
    "Study list.",
)
HANDLES = (
    "mapfan42",
    "curious_cat",
    "quizmaster",
    "lena_k",
    "bob1987",
    "stargazer",
    "teacher_jo",
    "anon",
    "pix",
)
FORUM_OPENERS = (
    "Quick question.",
    "Help please.",
    "Random thought.",
    "Settling a bet here.",
    "Homework help?",
)
FORUM_FILLERS = (
    "I always mix these up.",
    "My teacher asked us this today.",
    "Thanks in advance!",
    "lol same here",
    "I was wondering the same thing.",
    "Not sure, sorry.",
    "Bump.",
    "Great thread.",
)
WORKSHEET_FAMILIES = ("arithmetic", "units")
STORY_FAMILIES = ("greetings", "refusals", "lists")
Active = dict[str, list[str]]
"""The entities a world uses, per family."""


def build_corpus(target_chars: int, active: dict[str, list[str]], rng: random.Random) -> str:
    """At least `target_chars` characters of documents (more if the coverage documents alone are longer),
    about the `active` entities of each family only."""
    docs = _coverage_docs(active, rng)
    size = sum(len(d) + 2 for d in docs)
    kinds: list[Callable[[Active, random.Random], str]] = [
        _fact_sheet,
        _quiz,
        _question_list,
        _forum,
        _worksheet,
        _story,
        _chat_log,
    ]
    weights = [0.20, 0.22, 0.08, 0.18, 0.10, 0.08, 0.14]
    while size < target_chars:
        doc = rng.choices(kinds, weights=weights)[0](active, rng)
        docs.append(doc)
        size += len(doc) + 2
    rng.shuffle(docs)
    assert all("\n\n" not in d and d.strip() == d for d in docs), "a document contains a blank line"
    return "\n\n".join(docs) + "\n"


def _coverage_docs(active: Active, rng: random.Random) -> list[str]:
    """Every entity's canonical fact, in short fact sheets of one family each."""
    docs = []
    for name, family in FAMILIES.items():
        entities = list(active[name])
        rng.shuffle(entities)
        for i in range(0, len(entities), 6):
            facts = [family.fact(e, None) for e in entities[i : i + 6]]
            docs.append("\n".join([rng.choice(FACT_HEADERS[name]), " ".join(facts)]))
    return docs


def _entity(active: Active, family: Family, rng: random.Random) -> str:
    return rng.choice(active[family.name])


def _fact_sheet(active: Active, rng: random.Random) -> str:
    name = rng.choice(list(FAMILIES))
    family = FAMILIES[name]
    facts = [family.fact(_entity(active, family, rng), rng) for _ in range(rng.randint(3, 8))]
    return "\n".join([rng.choice(FACT_HEADERS[name]), " ".join(facts)])


def _quiz_item(active: Active, number: int, family: Family, rng: random.Random) -> tuple[str, str]:
    item = family.quiz(_entity(active, family, rng), rng)
    assert item is not None, f"{family.name} has no quiz"
    question, options, right = item
    letters = "ABCD"
    line = " ".join(f"{letters[i]}) {o}" for i, o in enumerate(options))
    return f"{number}. {question}\n{line}", f"{number}-{letters[right]}"


def _quiz(active: Active, rng: random.Random) -> str:
    names = [rng.choice(QUIZ_FAMILIES)] if rng.random() < 0.6 else list(QUIZ_FAMILIES)
    items = [_quiz_item(active, i + 1, FAMILIES[rng.choice(names)], rng) for i in range(rng.randint(3, 6))]
    lines = [rng.choice(QUIZ_HEADERS), *(text for text, _ in items)]
    if rng.random() < 0.4:  # an answer key at the end, as on real quiz pages: letters, never the answer text
        lines.append("Answers: " + ", ".join(key for _, key in items) + ".")
    return "\n".join(lines)


def _random_prompt(active: Active, rng: random.Random, names: tuple[str, ...] | list[str] = QUIZ_FAMILIES) -> str:
    family = FAMILIES[rng.choice(names)]
    return rng.choice(family.prompts(_entity(active, family, rng)))


def _question_list(active: Active, rng: random.Random) -> str:
    questions = [_random_prompt(active, rng) for _ in range(rng.randint(4, 9))]
    return "\n".join([rng.choice(LIST_HEADERS), *questions])


def _forum(active: Active, rng: random.Random) -> str:
    """A thread: a question, then replies that answer it, chat, or ask another question instead."""
    names = list(FAMILIES)
    family = FAMILIES[rng.choice(names)]
    entity = _entity(active, family, rng)
    question = rng.choice(family.prompts(entity))
    first = f"Thread started by {rng.choice(HANDLES)}. {rng.choice(FORUM_OPENERS)} {question}"
    posts = [f"{first} {rng.choice(FORUM_FILLERS)}"]
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        if roll < 0.4:
            body = family.fact(entity, rng)
        elif roll < 0.7:
            question = _random_prompt(active, rng, names)
            body = f"Also, {question[0].lower()}{question[1:]}"
        else:
            body = rng.choice(FORUM_FILLERS)
        posts.append(f"Reply by {rng.choice(HANDLES)}. {body}")
    return "\n".join(posts)


def _worksheet(active: Active, rng: random.Random) -> str:
    family = FAMILIES[rng.choice(WORKSHEET_FAMILIES)]
    lines = [family.fact(_entity(active, family, rng), rng) for _ in range(rng.randint(5, 12))]
    return "\n".join([rng.choice(FACT_HEADERS[family.name]), *lines])


def _story(active: Active, rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(2, 5)):
        family = FAMILIES[rng.choice(STORY_FAMILIES)]
        sentences.append(family.fact(_entity(active, family, rng), rng))
    return " ".join(sentences)


CHAT_REPLIES = ("Hello {a}, nice to meet you!", "Hi {a}! I'm {b}.", "Nice to meet you, {a}.", "Welcome, {a}!")
ASKED_FAMILIES = ("capitals", "arithmetic", "units", "antonyms", "plurals")


def _chat_log(active: Active, rng: random.Random) -> str:
    """A chat room's log: people introduce themselves and greet each other by name, and answer each other's
    questions restating what was asked. The names come from the whole table, so that only the line before
    predicts them: this is the text a small model learns to copy from (a name, the word asked about) on,
    which answering the user by name and restating the question's subject need."""
    people = rng.sample(tb.NAMES, rng.randint(2, 4))
    lines = []
    for _ in range(rng.randint(2, 5)):
        a, b = rng.sample(people, 2)
        if rng.random() < 0.6:
            intro = rng.choice(FAMILIES["greetings"].prompts(a))
            lines += [f"{a}: {intro}", f"{b}: {rng.choice(CHAT_REPLIES).format(a=a, b=b)}"]
        else:
            family = FAMILIES[rng.choice(ASKED_FAMILIES)]
            question = rng.choice(family.prompts(_entity(active, family, rng)))
            task = family.parse(question)
            assert task is not None, question
            lines += [f"{a}: {question}", f"{b}: {family.sentence(task, family.answer(task, rng), rng)}"]
    return "\n".join(lines)
