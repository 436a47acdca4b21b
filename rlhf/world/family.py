"""The shape every prompt family has, and the text helpers the families and the judge share.

A family (capitals, arithmetic, ...) owns everything about its kind of question: its entities, the templates
that phrase a prompt, parsing a prompt back to a `Task`, the right answer, wrong answers "of the right
kind", how a labeler phrases an answer, how a fact about an entity reads in the corpus, and whether a
response answers right. Prompt regexes are compiled from the same templates that render prompts, so every
generated prompt parses.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass
from typing import Literal

from rlhf.world.tables import number_value

Verdict = Literal["correct", "partial", "wrong", "missing"]

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'"})
_SLOT = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Task:
    """A parsed prompt: its family, the entity it asks about (the unit of the held-out split), its slots."""

    family: str
    entity: str
    slots: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str:
        return dict(self.slots)[name]


def normalize(text: str) -> str:
    """Lowercase words and numbers separated by single spaces, padded with a space at both ends.

    The padding lets `mentions` test a whole word or phrase with one substring search.
    """
    t = text.translate(_APOSTROPHES).lower()
    t = re.sub(r"(?<=\d),(?=\d{3}\b)", "", t)  # "3,000" is one number
    t = re.sub(r"[^a-z0-9']+", " ", t)
    return f" {' '.join(t.split())} "


def mentions(norm: str, phrase: str) -> bool:
    """Whether the normalized text `norm` contains `phrase` as whole words."""
    return _padded(phrase) in norm


@functools.lru_cache(maxsize=4096)
def _padded(phrase: str) -> str:
    # Vocabularies and markers are matched on every judge call; normalize each phrase once.
    return f" {normalize(phrase).strip()} "


def numbers(norm: str) -> list[int]:
    """The numbers a normalized text mentions, in order, whether written as digits or as words."""
    values = (number_value(w) for w in norm.split())
    return [v for v in values if v is not None]


def found(norm: str, vocab: list[str]) -> set[str]:
    """The members of `vocab` (an answer vocabulary) that the normalized text mentions."""
    return {v for v in vocab if mentions(norm, v)}


def set_verdict(candidates: set[str], expected: str) -> Verdict:
    """Right iff the only answer of the right kind mentioned is the expected one; several is hedging."""
    if not candidates:
        return "missing"
    return "correct" if candidates == {expected} else "wrong"


def numeric_verdict(expected: int, prompt_numbers: list[int], response: str) -> Verdict:
    """Compare the numbers of a response with the expected one, after setting aside the restated operands.

    "7 + 5 = 12" mentions 7 and 5 from the prompt and 12; only 12 counts. A bare "5." to "5 + 0" is right even
    though 5 is also an operand.
    """
    nums = numbers(normalize(response))
    if not nums:
        return "missing"
    extra = list(nums)
    for p in prompt_numbers:
        if p in extra:
            extra.remove(p)
    if not extra:
        return "correct" if nums == [expected] else "missing"
    return "correct" if set(extra) == {expected} else "wrong"


def join_items(items: list[str]) -> str:
    """Join items as "a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def compile_template(template: str) -> re.Pattern[str]:
    """Compile a template such as "What is the capital of {country}?" to a regex with a group per slot."""
    parts = _SLOT.split(template)
    body = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>.+?)" for i, p in enumerate(parts))
    return re.compile(rf"^{body}$", re.IGNORECASE)


class Family:
    """Base class; the subclasses (families.py, words.py, social.py) fill in the knowledge-specific part."""

    name: str = ""
    templates: tuple[str, ...] = ()
    ideal_words: int = 10
    """Words of a complete, concise answer; the judge penalises length beyond it."""
    polite_opener: bool = True
    """Whether a careful labeler opens with "Sure!" (refusals and greetings open in their own way)."""
    facts_per_entity: int = 1
    """Distinct facts an entity holds (an antonym pair: two, one per direction); a world's per-family budget
    counts facts, so a pair family uses half as many entities."""

    def __init__(self) -> None:
        self._patterns = [(compile_template(t), const) for t, const in self.specs()]

    def specs(self) -> list[tuple[str, dict[str, str]]]:
        """Templates with constant slots they imply (e.g. the operator of "add {a} and {b}")."""
        return [(t, {}) for t in self.templates]

    def prompts(self, entity: str, phrasings: list[int] | None = None) -> list[str]:
        """Every prompt string of this entity: templates (those of `phrasings`, indices into `specs()`, or
        all) x slot fillings."""
        specs = self.specs()
        out = []
        for template, const in (specs[i] for i in phrasings) if phrasings is not None else specs:
            for fill in self.fills(entity):
                if all(fill.get(k) == v for k, v in const.items()):
                    out.append(template.format(**fill))
        return out

    def _match(self, prompt: str) -> tuple[int, Task] | None:
        """(index into `specs()`, task) of the first template that phrases `prompt` about a known entity."""
        for i, (pattern, const) in enumerate(self._patterns):
            m = pattern.match(prompt)
            if m:
                task = self.task({**m.groupdict(), **const})
                if task is not None:
                    return i, task
        return None

    def parse(self, prompt: str) -> Task | None:
        """The task a prompt asks, or None if no template matches or the entity is unknown."""
        hit = self._match(prompt)
        return hit[1] if hit else None

    def phrasing(self, prompt: str) -> int | None:
        """The index into `specs()` of the template that phrases `prompt`, or None."""
        hit = self._match(prompt)
        return hit[0] if hit else None

    def short(self, task: Task, value: str) -> str:
        """A terse answer: the bare value."""
        return f"{value}."

    def quiz(self, entity: str, rng: random.Random) -> tuple[str, list[str], int] | None:
        """A quiz item (question, four options, index of the right one) about `entity`, or None."""
        question = rng.choice(self.prompts(entity))
        task = self.parse(question)
        assert task is not None, f"{self.name}: a generated prompt of {entity!r} does not parse"
        right = self.answer(task, rng)
        options = [right]
        for _ in range(50):  # distractors are drawn at random; give up on a fourth rather than loop forever
            w = self.wrong(task, rng)
            if w not in options:
                options.append(w)
            if len(options) == 4:
                break
        rng.shuffle(options)
        return question, options, options.index(right)

    # The knowledge-specific part, one implementation per family.
    def entities(self) -> list[str]:
        raise NotImplementedError

    def fills(self, entity: str) -> list[dict[str, str]]:
        raise NotImplementedError

    def task(self, slots: dict[str, str]) -> Task | None:
        raise NotImplementedError

    def answer(self, task: Task, rng: random.Random) -> str:
        raise NotImplementedError

    def wrong(self, task: Task, rng: random.Random) -> str:
        raise NotImplementedError

    def sentence(self, task: Task, value: str, rng: random.Random) -> str:
        raise NotImplementedError

    def verdict(self, task: Task, response: str) -> Verdict:
        raise NotImplementedError

    def grounded(self, task: Task, response: str) -> bool:
        raise NotImplementedError

    def subjects(self, response: str, asked: Task) -> set[str]:
        """What of this family the response talks about, as `subject(task)` keys ("Poland" in "The capital of
        Poland is Warsaw"); never the answer itself. `asked` is the task the response answers (of any
        family), so that an answer of the asked kind is not read as a subject. Default: nothing detectable."""
        return set()

    def subject(self, task: Task) -> str:
        """The key `subjects` gives when a response talks about what `task` asks."""
        return task.entity

    def fact(self, entity: str, rng: random.Random | None) -> str:
        """A sentence of the corpus stating the fact; `rng=None` gives the canonical phrasing."""
        raise NotImplementedError
