"""The fact families with a numeric or named answer (capitals, arithmetic, units) and the family registry.

The word families (antonyms, plurals) are in `words.py`, the open-ended ones (lists, greetings, refusals) in
`social.py`. `FAMILIES` registers all eight, and `parse_prompt` reads a prompt of any of them.
"""

from __future__ import annotations

import itertools
import random
import re

from rlhf.world import tables as tb
from rlhf.world.family import (
    Family,
    Task,
    Verdict,
    capitalize,
    found,
    mentions,
    normalize,
    numeric_verdict,
    set_verdict,
)
from rlhf.world.social import Greetings, Lists, Refusals
from rlhf.world.words import Antonyms, Plurals

_CAPITAL_OF = {country.lower(): (country, capital) for country, capital in tb.CAPITALS}
_ALL_CAPITALS = [capital for _, capital in tb.CAPITALS]


class Capitals(Family):
    name = "capitals"
    templates = (
        "What is the capital of {country}?",
        "What's the capital of {country}?",
        "Which city is the capital of {country}?",
        "Name the capital of {country}.",
        "Tell me the capital of {country}.",
        "Do you know the capital of {country}?",
        "What city is the capital of {country}?",
        "Can you tell me the capital of {country}?",
    )

    def entities(self) -> list[str]:
        return [country for country, _ in tb.CAPITALS]

    def fills(self, entity: str) -> list[dict[str, str]]:
        return [{"country": entity}]

    def task(self, slots: dict[str, str]) -> Task | None:
        hit = _CAPITAL_OF.get(slots["country"].lower())
        return Task(self.name, hit[0], (("country", hit[0]),)) if hit else None

    def answer(self, task: Task, rng: random.Random) -> str:
        return _CAPITAL_OF[task.entity.lower()][1]

    def wrong(self, task: Task, rng: random.Random) -> str:
        right = self.answer(task, rng)
        return rng.choice([c for c in _ALL_CAPITALS if c != right])

    def sentence(self, task: Task, value: str, rng: random.Random) -> str:
        c = task.entity
        return rng.choice([f"The capital of {c} is {value}.", f"{value} is the capital of {c}."])

    def verdict(self, task: Task, response: str) -> Verdict:
        return set_verdict(found(normalize(response), _ALL_CAPITALS), _CAPITAL_OF[task.entity.lower()][1])

    def grounded(self, task: Task, response: str) -> bool:
        return mentions(normalize(response), task.entity)

    def subjects(self, response: str, asked: Task) -> set[str]:
        norm = normalize(response)
        return {country for country, _ in tb.CAPITALS if mentions(norm, country)}

    def fact(self, entity: str, rng: random.Random | None) -> str:
        cap = _CAPITAL_OF[entity.lower()][1]
        if rng is None:
            return f"{cap} is the capital of {entity}."
        return rng.choice(
            [
                f"{cap} is the capital of {entity}.",
                f"The capital of {entity} is {cap}.",
                f"The capital city of {entity} is {cap}.",
                f"{capitalize(entity)} has its capital in {cap}.",
                f"{cap}, the capital of {entity}, is a busy city.",
            ]
        )


def _arithmetic_entities() -> list[str]:
    """a + b over operands 0..MAX_OPERAND, a - b with a <= MAX_RESULT: every result in 0..MAX_RESULT.

    a + b and b + a are one entity, so a held-out sum is not learnt from its mirror image.
    """
    n = tb.MAX_OPERAND
    plus = [f"{a}+{b}" for a in range(n + 1) for b in range(a, n + 1)]
    minus = [f"{a}-{b}" for b in range(n + 1) for a in range(b, tb.MAX_RESULT + 1)]
    return plus + minus


_ARITHMETIC_ENTITIES = frozenset(_arithmetic_entities())
_NUM = r"([a-z]+|\d+)"
_EXPRESSIONS = (  # (pattern, operator, whether the operands come as (b, a)) over lowercased text
    (re.compile(rf"\b{_NUM}\s*(?:plus|\+)\s*{_NUM}\b"), "+", False),
    (re.compile(rf"\badd {_NUM} and {_NUM}\b"), "+", False),
    (re.compile(rf"\bsum of {_NUM} and {_NUM}\b"), "+", False),
    (re.compile(rf"\b{_NUM}\s*(?:minus|-|take away)\s*{_NUM}\b"), "-", False),
    (re.compile(rf"\b(?:subtract|take) {_NUM} from {_NUM}\b"), "-", True),
)


def arithmetic_key(a: int, b: int, op: str) -> str:
    """The entity of "a op b": sums are unordered."""
    return f"{min(a, b)}+{max(a, b)}" if op == "+" else f"{a}-{b}"


class Arithmetic(Family):
    name = "arithmetic"
    ideal_words = 10
    plus = (
        "What is {a} plus {b}?",
        "What is {a} + {b}?",
        "How much is {a} plus {b}?",
        "Calculate {a} + {b}.",
        "What do you get when you add {a} and {b}?",
        "Please add {a} and {b}.",
        "What is the sum of {a} and {b}?",
    )
    minus = (
        "What is {a} minus {b}?",
        "What is {a} - {b}?",
        "How much is {a} minus {b}?",
        "Calculate {a} - {b}.",
        "What do you get when you subtract {b} from {a}?",
        "Please subtract {b} from {a}.",
        "What is {a} take away {b}?",
    )

    def specs(self) -> list[tuple[str, dict[str, str]]]:
        # "twenty - four" would read as 24: templates with a symbol take digits only.
        specs = [(t, {"op": "+"}) for t in self.plus] + [(t, {"op": "-"}) for t in self.minus]
        return [(t, {**c, "form": "digits"}) if " + " in t or " - " in t else (t, c) for t, c in specs]

    def entities(self) -> list[str]:
        return _arithmetic_entities()

    def fills(self, entity: str) -> list[dict[str, str]]:
        op = "+" if "+" in entity else "-"
        a, b = (int(x) for x in entity.split(op))
        orders = [(a, b), (b, a)] if op == "+" and a != b else [(a, b)]
        forms = (("digits", str), ("words", tb.number_word))
        return [{"a": f(x), "b": f(y), "op": op, "form": form} for x, y in orders for form, f in forms]

    def task(self, slots: dict[str, str]) -> Task | None:
        a, b, op = tb.number_value(slots["a"]), tb.number_value(slots["b"]), slots["op"]
        if a is None or b is None:
            return None
        entity = arithmetic_key(a, b, op)
        if entity not in _ARITHMETIC_ENTITIES:
            return None
        return Task(self.name, entity, (("a", slots["a"]), ("b", slots["b"]), ("op", op)))

    @staticmethod
    def operands(task: Task) -> tuple[int, int, str]:
        a, b = tb.number_value(task.get("a")), tb.number_value(task.get("b"))
        assert a is not None and b is not None
        return a, b, task.get("op")

    def result(self, task: Task) -> int:
        a, b, op = self.operands(task)
        return a + b if op == "+" else a - b

    def answer(self, task: Task, rng: random.Random) -> str:
        return str(self.result(task))

    def wrong(self, task: Task, rng: random.Random) -> str:
        a, b, _ = self.operands(task)
        right = self.result(task)
        options = [v for v in range(max(0, right - 3), right + 4) if v not in (right, a, b)]
        return str(rng.choice(options))

    def sentence(self, task: Task, value: str, rng: random.Random) -> str:
        a, b, op = task.get("a"), task.get("b"), task.get("op")
        word = "plus" if op == "+" else "minus"
        forms = [f"{a} {word} {b} is {value}.", f"{a} {word} {b} equals {value}."]
        if a.isdigit() and b.isdigit():  # "two + two" mixes notations; symbols only with digits
            forms.append(f"{a} {op} {b} = {value}.")
        return capitalize(rng.choice(forms))

    def verdict(self, task: Task, response: str) -> Verdict:
        a, b, _ = self.operands(task)
        return numeric_verdict(self.result(task), [a, b], response)

    def grounded(self, task: Task, response: str) -> bool:
        norm = normalize(response)
        return any(s in response for s in "+-=") or any(mentions(norm, w) for w in ("plus", "minus", "equals"))

    def subjects(self, response: str, asked: Task) -> set[str]:
        text = response.lower()
        keys = set()
        for pattern, op, swapped in _EXPRESSIONS:
            for m in pattern.finditer(text):
                x, y = tb.number_value(m.group(1)), tb.number_value(m.group(2))
                if x is not None and y is not None:
                    keys.add(arithmetic_key(*((y, x) if swapped else (x, y)), op))
        return keys

    def fact(self, entity: str, rng: random.Random | None) -> str:
        op = "+" if "+" in entity else "-"
        a, b = (int(x) for x in entity.split(op))
        r = a + b if op == "+" else a - b
        if rng is None:
            return f"{a} {op} {b} = {r}."
        w = tb.number_word
        if op == "+":
            forms = [
                f"{w(a)} plus {w(b)} equals {w(r)}.",
                f"{a} plus {b} is {r}.",
                f"If you add {a} and {b} you get {r}.",
            ]
        else:
            forms = [
                f"{w(a)} minus {w(b)} equals {w(r)}.",
                f"{a} minus {b} is {r}.",
                f"If you take {b} from {a} you get {r}.",
            ]
        return capitalize(rng.choice([f"{a} {op} {b} = {r}.", *forms]))


_UNIT_BY_NAME = {name: u for u in tb.UNITS for name in (u[0], u[1])}


class Units(Family):
    name = "units"
    templates = (
        "How many {to} are in {q} {frm}?",
        "How many {to} are there in {q} {frm}?",
        "Convert {q} {frm} to {to}.",
        "What is {q} {frm} in {to}?",
        "How many {to} make {q} {frm}?",
        "Please convert {q} {frm} into {to}.",
    )

    def entities(self) -> list[str]:
        return [f"{plural}->{to}:{q}" for plural, _, to, _ in tb.UNITS for q in tb.UNIT_QUANTITIES]

    @staticmethod
    def _split(entity: str) -> tuple[tuple[str, str, str, int], int]:
        pair, q = entity.split(":")
        return _UNIT_BY_NAME[pair.split("->")[0]], int(q)

    def fills(self, entity: str) -> list[dict[str, str]]:
        (plural, singular, to, _), q = self._split(entity)
        frm = singular if q == 1 else plural
        return [{"q": fmt(q), "frm": frm, "to": to} for fmt in (str, tb.number_word)]

    def task(self, slots: dict[str, str]) -> Task | None:
        q, unit = tb.number_value(slots["q"]), _UNIT_BY_NAME.get(slots["frm"].lower())
        if q is None or unit is None or unit[2] != slots["to"].lower() or q not in tb.UNIT_QUANTITIES:
            return None
        return Task(self.name, f"{unit[0]}->{unit[2]}:{q}", tuple(sorted(slots.items())))

    def answer(self, task: Task, rng: random.Random) -> str:
        (_, _, _, mult), q = self._split(task.entity)
        return str(q * mult)

    def wrong(self, task: Task, rng: random.Random) -> str:
        (_, _, _, mult), q = self._split(task.entity)
        options = {q * m for m in (7, 10, 12, 24, 60, 100, 1000)} | {q * mult + q, q * mult - q}
        return str(rng.choice(sorted(options - {q * mult, q, 0})))

    def sentence(self, task: Task, value: str, rng: random.Random) -> str:
        q, frm, to = task.get("q"), task.get("frm"), task.get("to")
        forms = [
            f"{q} {frm} is {value} {to}.",
            f"There are {value} {to} in {q} {frm}.",
            f"{q} {frm} equals {value} {to}.",
        ]
        return capitalize(rng.choice(forms))

    def verdict(self, task: Task, response: str) -> Verdict:
        (_, _, _, mult), q = self._split(task.entity)
        return numeric_verdict(q * mult, [q], response)

    def grounded(self, task: Task, response: str) -> bool:
        return mentions(normalize(response), task.get("to"))

    def subjects(self, response: str, asked: Task) -> set[str]:
        # "7 days" answers "How many days are in one week?": a quantity of the asked target unit is the answer.
        answer_unit = asked.get("to") if asked.family == self.name else None
        words = normalize(response).split()
        keys = set()
        for q_word, unit_word in itertools.pairwise(words):
            unit, q = _UNIT_BY_NAME.get(unit_word), tb.number_value(q_word)
            if unit is not None and q is not None and unit[0] != answer_unit:
                keys.add(f"{unit[0]}->{unit[2]}:{q}")
        return keys

    def fact(self, entity: str, rng: random.Random | None) -> str:
        (plural, singular, to, mult), q = self._split(entity)
        frm, v = (singular if q == 1 else plural), q * mult
        if rng is None:
            return f"{q} {frm} is {v} {to}."
        forms = [
            f"{q} {frm} is {v} {to}.",
            f"There are {v} {to} in {q} {frm}.",
            f"{tb.number_word(q)} {frm} equals {v} {to}.",
        ]
        return capitalize(rng.choice(forms))


FAMILIES: dict[str, Family] = {
    f.name: f for f in (Capitals(), Arithmetic(), Units(), Antonyms(), Plurals(), Lists(), Greetings(), Refusals())
}


def parse_prompt(prompt: str) -> Task | None:
    """The task a prompt string asks (any family), or None for a prompt the world does not know."""
    text = " ".join(prompt.split())
    if len(text) > 200:  # no prompt of the world is this long; skip the regexes on long garbage
        return None
    for family in FAMILIES.values():
        task = family.parse(text)
        if task is not None:
            return task
    return None
