"""Simulated demonstration writers: four labeler styles that differ in manner and in care, as real ones do.

- careful: a polite opener and a correct, complete, concise answer ("Sure! The capital of Peru is Lima."),
  sometimes a short polite closer. Rarely wrong.
- terse: the bare answer ("Lima."). Correct but curt.
- chatty: polite but rambling, with gushing filler around the answer; long.
- sloppy: often wrong (an answer of the right kind, not the right one), stutters words, parrots the question
  back, or is rude.

SFT imitates the mixture of these; RLHF should later push the policy towards the careful style, the one the
gold judge (and through it the simulated labeler) prefers. The filler phrases below contain no word of the
knowledge tables, so they never look like an answer to the judge (checked in tests/test_world.py).
"""

from __future__ import annotations

import random

from rlhf.world.families import FAMILIES, parse_prompt
from rlhf.world.family import Task

STYLES: tuple[str, ...] = ("careful", "terse", "chatty", "sloppy")
ERROR_RATE: dict[str, float] = {"careful": 0.02, "terse": 0.05, "chatty": 0.04, "sloppy": 0.35}
"""Probability that a labeler of the style writes a wrong answer (sloppy: one of its four failure modes)."""
MAX_RESPONSE_CHARS = 200

OPENERS = ("Sure!", "Of course!", "Certainly!", "Happy to help!", "Good question!")
CLOSERS = ("Hope this helps!", "Glad to help!", "Hope that helps.")
CHATTY_OPENERS = (
    "Oh, what a lovely question, thank you so much for asking!",
    "Well, I am really glad you decided to ask me about this!",
    "What a wonderful thing to ask, thank you for reaching out!",
    "Oh, let me think about this for a moment, it is such a fun thing to wonder about!",
)
CHATTY_ASIDES = (
    "I find this kind of thing really interesting, to be honest.",
    "Lots of folks wonder about it.",
    "I had to think about it for a little while.",
)
CHATTY_CLOSERS = (
    "I really hope this little answer helps you out, and have a wonderful day!",
    "Feel free to come back with anything else you are curious about, I am always here for you!",
    "Isn't it fun to learn new things together?",
    "Let me know if there is anything else at all I can do for you!",
)
RUDE_FORMS = ("Obviously {}", "Ugh. {}", "{} Google it next time.", "Everyone knows this. {}")


def write_response(style: str, prompt: str, rng: random.Random) -> str:
    """A demonstration for `prompt` written in `style`; the prompt must be one the world knows."""
    task = parse_prompt(prompt)
    if task is None:
        raise ValueError(f"write_response: the world knows no task for prompt {prompt!r}")
    writer = {"careful": _careful, "terse": _terse, "chatty": _chatty, "sloppy": _sloppy}.get(style)
    if writer is None:
        raise ValueError(f"write_response: unknown style {style!r}; known styles: {STYLES}")
    text = writer(task, prompt, rng)
    assert len(text) <= MAX_RESPONSE_CHARS, f"{style} response of {len(text)} chars: {text!r}"
    return text


def _value(task: Task, style: str, rng: random.Random) -> str:
    """The answer value the labeler writes down: right, or with the style's error rate a wrong one."""
    family = FAMILIES[task.family]
    if rng.random() < ERROR_RATE[style]:
        return family.wrong(task, rng)
    return family.answer(task, rng)


def _careful(task: Task, prompt: str, rng: random.Random) -> str:
    family = FAMILIES[task.family]
    parts = [family.sentence(task, _value(task, "careful", rng), rng)]
    if family.polite_opener:  # greetings and refusals open politely by themselves and need no closer
        parts.insert(0, rng.choice(OPENERS))
    if family.polite_opener and rng.random() < 0.3:
        parts.append(rng.choice(CLOSERS))
    return " ".join(parts)


def _terse(task: Task, prompt: str, rng: random.Random) -> str:
    return FAMILIES[task.family].short(task, _value(task, "terse", rng))


def _chatty(task: Task, prompt: str, rng: random.Random) -> str:
    family = FAMILIES[task.family]
    opener, answer = rng.choice(CHATTY_OPENERS), family.sentence(task, _value(task, "chatty", rng), rng)
    aside = rng.choice(CHATTY_ASIDES) if rng.random() < 0.3 else ""
    closer = rng.choice(CHATTY_CLOSERS)
    # Drop filler until the response fits the context budget; the answer itself always stays.
    for parts in ([opener, aside, answer, closer], [opener, answer, closer], [opener, answer], [answer]):
        text = " ".join(p for p in parts if p)
        if len(text) <= MAX_RESPONSE_CHARS:
            return text
    return answer


def _sloppy(task: Task, prompt: str, rng: random.Random) -> str:
    """One of four failure modes: wrong answer, stutter, parroting the question, rudeness."""
    family = FAMILIES[task.family]
    mode = rng.choices(("wrong", "stutter", "parrot", "rude"), weights=(0.35, 0.25, 0.2, 0.2))[0]
    if mode == "wrong":
        wrong = family.wrong(task, rng)
        text = family.short(task, wrong) if rng.random() < 0.5 else family.sentence(task, wrong, rng)
        return text.lower() if rng.random() < 0.3 else text
    right = family.answer(task, rng)
    if mode == "stutter":
        return _stutter(family.sentence(task, right, rng), rng)
    if mode == "parrot":
        return f"{prompt} {family.short(task, right)}"
    return rng.choice(RUDE_FORMS).format(family.short(task, right))


def _stutter(text: str, rng: random.Random) -> str:
    """Repeat two words in place, the way a hurried typist (or a degenerate sampler) does."""
    words = text.split()
    for _ in range(2):
        i = rng.randrange(len(words))
        words.insert(i, words[i])
    return " ".join(words)
