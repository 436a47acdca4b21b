"""The word families: antonyms ("What is the opposite of hot?") and plurals ("What is the plural of mouse?").

A wrong answer of the right kind is another antonym of the table, or a plural formed by rule where the noun is
irregular ("mouses") or by the wrong rule ("boxs", "citys").
"""

from __future__ import annotations

import random
import re

from rlhf.world import tables as tb
from rlhf.world.family import Family, Task, Verdict, capitalize, found, mentions, normalize, set_verdict

_ANTONYM_OF = {a: b for pair in tb.ANTONYMS for a, b in (pair, pair[::-1])}
_ANTONYM_PAIR = {w: f"{pair[0]}/{pair[1]}" for pair in tb.ANTONYMS for w in pair}
_ALL_ANTONYMS = sorted(_ANTONYM_OF)
# The words a sentence sets as opposites: "the opposite of A is B", "B is the opposite of A", "A and B are
# opposites". Lookaheads, so that one sentence's words never consume the next one's.
_OPPOSITES = re.compile(
    r" (?:opposite|antonym) of (\w+)(?= )(?: is (?:the )?(\w+)(?= ))?"
    r"| (\w+) is the (?:opposite|antonym) of (\w+)(?= )| (\w+) and (\w+) are (?:opposites|antonyms)(?= )"
)
_PLURAL_SUBJECT = re.compile(r" (?:plural of|plural form of|one) (\w+) ")


class Antonyms(Family):
    name = "antonyms"
    facts_per_entity = 2
    templates = (
        "What is the opposite of {word}?",
        "What's the opposite of {word}?",
        "What is the antonym of {word}?",
        "Give me the opposite of {word}.",
        "Which word means the opposite of {word}?",
        "Tell me the opposite of {word}.",
        "What's the antonym of {word}?",
        "Name the opposite of {word}.",
        "Do you know the opposite of {word}?",
    )

    def entities(self) -> list[str]:
        # A pair is one entity: "the opposite of hot is cold" in a demo would give away the opposite of cold.
        return [f"{a}/{b}" for a, b in tb.ANTONYMS]

    def fills(self, entity: str) -> list[dict[str, str]]:
        return [{"word": w} for w in entity.split("/")]

    def task(self, slots: dict[str, str]) -> Task | None:
        word = slots["word"].lower()
        return Task(self.name, _ANTONYM_PAIR[word], (("word", word),)) if word in _ANTONYM_PAIR else None

    def answer(self, task: Task, rng: random.Random) -> str:
        return _ANTONYM_OF[task.get("word")]

    def wrong(self, task: Task, rng: random.Random) -> str:
        pair = set(task.entity.split("/"))
        return rng.choice([w for w in _ALL_ANTONYMS if w not in pair])

    def sentence(self, task: Task, value: str, rng: random.Random) -> str:
        w = task.get("word")
        return rng.choice([f"The opposite of {w} is {value}.", f"{capitalize(value)} is the opposite of {w}."])

    def verdict(self, task: Task, response: str) -> Verdict:
        cands = found(normalize(response), _ALL_ANTONYMS) - {task.get("word")}
        return set_verdict(cands, _ANTONYM_OF[task.get("word")])

    def grounded(self, task: Task, response: str) -> bool:
        return mentions(normalize(response), task.get("word"))

    def subjects(self, response: str, asked: Task) -> set[str]:
        # Both words of each stated pair: opposition is symmetric, so "The opposite of below is above" answers
        # "What is the opposite of above?" (it states the asked pair, read the other way round), while "The
        # opposite of sink is strong" to a question about float is about other words. (Reading only the word
        # after "opposite of" as the subject called the first off topic: re-read this way, the 564fb91 run's SFT
        # answers 8 of its 50 evaluation antonym questions right, not 4.)
        return {w for m in _OPPOSITES.findall(normalize(response)) for w in m if w}

    def subject(self, task: Task) -> str:
        return task.get("word")

    def fact(self, entity: str, rng: random.Random | None) -> str:
        a, b = entity.split("/")
        if rng is None:
            return f"The opposite of {a} is {b}."
        if rng.random() < 0.5:
            a, b = b, a
        forms = [
            f"The opposite of {a} is {b}.",
            f"{a} is the opposite of {b}.",
            f"{a} and {b} are opposites.",
        ]
        return capitalize(rng.choice(forms))


_PLURAL_OF = dict(tb.PLURALS)
_ALL_PLURALS = sorted(_PLURAL_OF.values())


def naive_plurals(noun: str) -> list[str]:
    """The plurals a careless writer forms by rule: mouses, boxs, citys, cityes."""
    return [noun + "s", noun + "es", noun[:-1] + "ies", noun + "en"]


class Plurals(Family):
    name = "plurals"
    templates = (
        "What is the plural of {noun}?",
        "What's the plural of {noun}?",
        "What is the plural form of {noun}?",
        "How do you say more than one {noun}?",
        "Give me the plural of {noun}.",
        "Tell me the plural of {noun}.",
    )

    def entities(self) -> list[str]:
        return [s for s, _ in tb.PLURALS]

    def fills(self, entity: str) -> list[dict[str, str]]:
        return [{"noun": entity}]

    def task(self, slots: dict[str, str]) -> Task | None:
        noun = slots["noun"].lower()
        return Task(self.name, noun, (("noun", noun),)) if noun in _PLURAL_OF else None

    def answer(self, task: Task, rng: random.Random) -> str:
        return _PLURAL_OF[task.entity]

    def wrong(self, task: Task, rng: random.Random) -> str:
        right = _PLURAL_OF[task.entity]
        return rng.choice([p for p in naive_plurals(task.entity)[:2] if p != right])

    def sentence(self, task: Task, value: str, rng: random.Random) -> str:
        n = task.entity
        return rng.choice([f"The plural of {n} is {value}.", f"One {n}, two {value}."])

    def verdict(self, task: Task, response: str) -> Verdict:
        vocab = _ALL_PLURALS + naive_plurals(task.entity)
        return set_verdict(found(normalize(response), vocab) - {task.entity}, _PLURAL_OF[task.entity])

    def grounded(self, task: Task, response: str) -> bool:
        return mentions(normalize(response), task.entity)

    def subjects(self, response: str, asked: Task) -> set[str]:
        # "One toy, two toys." is about a toy; only the table's nouns count ("one day" is a unit).
        return {w for w in _PLURAL_SUBJECT.findall(normalize(response)) if w in _PLURAL_OF}

    def fact(self, entity: str, rng: random.Random | None) -> str:
        p = _PLURAL_OF[entity]
        if rng is None:
            return f"The plural of {entity} is {p}."
        forms = [
            f"The plural of {entity} is {p}.",
            f"One {entity}, two {p}.",
            f"We say one {entity} but many {p}.",
        ]
        return rng.choice(forms)
