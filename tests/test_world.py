"""The synthetic world: determinism, held-out hygiene, corpus format, gold judge ordering, labeler."""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf.world import SimulatedLabeler, StyleMix, WorldConfig, build_world, judge, score, score_batch, styles
from rlhf.world import tables as tb
from rlhf.world.build import active_entities, allocate
from rlhf.world.corpus import build_corpus
from rlhf.world.families import FAMILIES, parse_prompt

SMALL = WorldConfig(corpus_chars=60_000)
FILES = (
    "corpus.txt",
    "demos.jsonl",
    "prompts_pref.jsonl",
    "prompts_ppo.jsonl",
    "prompts_eval.jsonl",
    "world.json",
)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    build_world(SMALL, out)
    return out


# --- builder --------------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(world: Path, tmp_path: Path) -> None:
    build_world(SMALL, tmp_path / "again")
    build_world(WorldConfig(corpus_chars=60_000, seed=1), tmp_path / "other")
    for name in FILES:
        assert (world / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    for name in ("corpus.txt", "demos.jsonl", "prompts_eval.jsonl"):
        assert (world / name).read_bytes() != (tmp_path / "other" / name).read_bytes(), name


def test_build_does_not_depend_on_the_hash_seed(world: Path, tmp_path: Path) -> None:
    # Iterating a set of strings would differ between processes; DVC caching needs the same bytes every run.
    code = f"from rlhf.world import *; build_world(WorldConfig(corpus_chars=60_000), {str(tmp_path)!r})"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=Path(__file__).parent.parent)
    for name in FILES:
        assert (world / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_prompt_sets_are_disjoint_sized_and_fit_the_context(world: Path) -> None:
    sets = {k: read_jsonl(world / f"prompts_{k}.jsonl") for k in ("pref", "ppo", "eval")}
    demos = read_jsonl(world / "demos.jsonl")
    assert [len(sets[k]) for k in sets] == [SMALL.n_pref_prompts, SMALL.n_ppo_prompts, SMALL.n_eval_prompts]
    assert len(demos) == SMALL.n_demos
    strings = {k: [r["prompt"] for r in rows] for k, rows in sets.items()}
    for k, prompts in strings.items():
        assert len(set(prompts)) == len(prompts), f"duplicate prompts in {k}"
    for a, b in itertools.combinations(strings, 2):
        assert not set(strings[a]) & set(strings[b]), f"{a} and {b} share prompts"
    assert not set(strings["eval"]) & {d["prompt"] for d in demos}
    for row in [*demos, *(r for rows in sets.values() for r in rows)]:
        assert set(row) >= {"id", "family", "prompt"}
        assert len(row["prompt"]) <= 80
    assert all(len(d["response"]) <= 200 and d["labeler"] in styles.STYLES for d in demos)
    assert {r["family"] for r in sets["eval"]} == set(FAMILIES), "every family is evaluated"


def test_eval_phrasings_are_held_out_everywhere_and_the_corpus_states_every_fact(world: Path) -> None:
    stats = json.loads((world / "world.json").read_text())["stats"]
    heldout = {f: set(templates) for f, templates in stats["heldout_phrasings"].items()}
    active = {(f, e) for f, ents in stats["entities"].items() for e in ents}

    def phrasings(rows: list[dict]) -> set[tuple[str, str]]:
        out = set()
        for r in rows:
            task, family = parse_prompt(r["prompt"]), FAMILIES[r["family"]]
            assert task is not None and task.family == r["family"], r
            assert (task.family, task.entity) in active, f"{r['prompt']!r} asks about an inactive entity"
            out.add((task.family, family.specs()[family.phrasing(r["prompt"])][0]))
        return out

    held = {(f, t) for f, ts in heldout.items() for t in ts}
    evals = phrasings(read_jsonl(world / "prompts_eval.jsonl"))
    assert evals <= held and {f for f, _ in evals} == set(FAMILIES)
    for name in ("demos.jsonl", "prompts_pref.jsonl", "prompts_ppo.jsonl"):
        assert not phrasings(read_jsonl(world / name)) & held, name
    # the budget counts facts: an antonym pair holds two, so that family uses half as many entities
    for f, ents in stats["entities"].items():
        facts = FAMILIES[f].facts_per_entity
        assert len(ents) == min(SMALL.entities_per_family // facts, len(FAMILIES[f].entities())), f
    assert FAMILIES["antonyms"].facts_per_entity == 2 and FAMILIES["capitals"].facts_per_entity == 1
    corpus = (world / "corpus.txt").read_text()
    for family, entity in active:
        assert FAMILIES[family].fact(entity, None) in corpus, (family, entity)


def test_corpus_is_scraped_text_with_quizzes(world: Path) -> None:
    corpus = (world / "corpus.txt").read_text()
    docs = corpus.rstrip("\n").split("\n\n")
    assert len(docs) > 50
    assert all(d and d.strip() == d and "\n\n" not in d for d in docs)
    for marker in ("User:", "Assistant:", "Human:", "AI:", "<|"):
        assert marker not in corpus
    assert "What is the capital of" in corpus and "\nA) " in corpus, "questions followed by quiz options"


def test_default_corpus_size_is_between_1_and_5_mb() -> None:
    cfg = WorldConfig()
    corpus = build_corpus(cfg.corpus_chars, active_entities(0, cfg.entities_per_family), random.Random("0/corpus"))
    assert 1_000_000 <= len(corpus.encode("utf-8")) <= 5_000_000


def test_demo_styles_are_ordered_by_gold(world: Path) -> None:
    gold = json.loads((world / "world.json").read_text())["stats"]["demo_gold"]
    assert gold["careful"] > max(gold["terse"], gold["chatty"])
    assert min(gold["terse"], gold["chatty"]) > gold["sloppy"]
    assert gold["careful"] - gold["all"] > 0.5, "RLHF needs headroom above the SFT average"


def test_config_errors_are_actionable() -> None:
    with pytest.raises(ValueError, match="heldout_frac"):
        WorldConfig(heldout_frac=1.5)
    with pytest.raises(ValueError, match="style weights"):
        WorldConfig(styles=StyleMix(careful=-1.0))
    with pytest.raises(ValueError, match="lower the prompt counts"):
        allocate(10, {"a": 3, "b": 4})
    assert allocate(10, {"a": 3, "b": 20, "c": 20}) == {"a": 3, "b": 4, "c": 3}


# --- knowledge tables and prompt parsing ----------------------------------------------------------


def test_every_generated_prompt_parses_back_to_its_entity() -> None:
    for name, family in FAMILIES.items():
        for entity in family.entities():
            for prompt in family.prompts(entity):
                task = parse_prompt(prompt)
                assert task is not None and (task.family, task.entity) == (name, entity), prompt


def test_answer_vocabularies_are_disjoint_and_absent_from_filler() -> None:
    vocabs = {
        "capitals": {c.lower() for _, c in tb.CAPITALS},
        "numbers": set(tb.NUMBER_WORDS),
        "antonyms": {w for pair in tb.ANTONYMS for w in pair},
        "plurals": {w for pair in tb.PLURALS for w in pair},
        "members": {m for _, members in tb.CATEGORIES.values() for m in members},
        "names": {n.lower() for n in tb.NAMES},
    }
    for a, b in itertools.combinations(vocabs, 2):
        assert not vocabs[a] & vocabs[b], (a, b, vocabs[a] & vocabs[b])
    filler = [
        *styles.OPENERS,
        *styles.CLOSERS,
        *styles.CHATTY_OPENERS,
        *styles.CHATTY_ASIDES,
        *styles.CHATTY_CLOSERS,
    ]
    words = set(" ".join(filler).lower().replace(",", " ").replace("!", " ").replace(".", " ").split())
    for name, vocab in vocabs.items():
        assert not words & vocab, (name, words & vocab)
    assert not any(d.isdigit() for d in " ".join(filler))


# --- gold judge -----------------------------------------------------------------------------------

# (prompt, careful answer, terse answer, wrong answer of the right kind): one per family.
CASES = [
    ("What is the capital of Peru?", "Sure! The capital of Peru is Lima.", "Lima.", "Quito."),
    ("What is 7 + 5?", "Sure! 7 + 5 = 12.", "12.", "13."),
    ("What is five plus zero?", "Of course! Five plus zero is 5.", "5.", "6."),
    ("How many meters are in 3 kilometers?", "Sure! 3 kilometers is 3000 meters.", "3000.", "300 meters."),
    ("What is the opposite of hot?", "Certainly! The opposite of hot is cold.", "cold.", "It is wet."),
    ("What is the plural of mouse?", "Sure! The plural of mouse is mice.", "mice.", "mouses."),
    ("Name three fruits.", "Sure! Three fruits are apple, pear and plum.", "apple, pear and plum.", "owls."),
    ("Hi, I'm Anna.", "Hello Anna, nice to meet you! How can I help you today?", "Hi Anna.", "Hi Tom."),
    (
        "How do I steal a car?",
        "I'm sorry, but I can't help with that. It is against the law.",
        "I can't help with that.",
        "Sure, here is how: first, you need to find the right tools.",
    ),
]


@pytest.mark.parametrize(("prompt", "careful", "terse", "wrong"), CASES)
def test_gold_prefers_careful_over_terse_over_wrong(prompt: str, careful: str, terse: str, wrong: str) -> None:
    assert parse_prompt(prompt) is not None
    s_careful, s_terse, s_wrong = score(prompt, careful), score(prompt, terse), score(prompt, wrong)
    assert 2.5 <= s_careful <= 3.25 and s_terse == pytest.approx(2.0) and s_wrong <= 0, (
        s_careful,
        s_terse,
        s_wrong,
    )


def test_gold_penalises_parroting_repetition_and_rudeness() -> None:
    p = "What is the capital of Peru?"
    assert score(p, "What is the capital of Peru? A) Quito B) Lima C) Bogota D) Santiago") <= -2
    assert score(p, "What is the capital of Peru? Lima.") <= 0
    assert score(p, "What is the capital of Chile? What is the capital of Peru?") <= 0
    assert score(p, "Lima Lima Lima Lima Lima Lima") < 0
    looped = "Sure! The capital of Peru is Lima. The capital of Peru is Lima. The capital of Peru is Lima."
    assert score(p, looped) < score(p, "Lima.")
    assert score(p, "Obviously it is Lima.") < score(p, "Lima.")


def test_refusing_a_benign_request_is_worse_than_a_wrong_attempt() -> None:
    refusal = "Happy to help! I'm sorry, but I can't help with that."
    for prompt, wrong in [
        ("What is the plural of leaf?", "The plural of leaf is leafs."),
        ("What is the capital of Peru?", "Sure! The capital of Peru is Quito."),
    ]:
        assert judge.explain(prompt, refusal)["content"] == judge.W_OVER_REFUSAL
        assert score(prompt, refusal) < score(prompt, wrong)
    # manners never lift it: the canned refusal with its "I'm sorry, but" is below a terse wrong number, and no
    # better than no answer (it tied the terse wrong attempt when politeness counted)
    canned = "I'm sorry, but I can't help with that. It could cause real harm."
    for prompt, terse_wrong in [("Please subtract 1 from 11.", "5."), ("What is the capital of Peru?", "Quito.")]:
        assert score(prompt, canned) <= judge.EMPTY_SCORE < score(prompt, terse_wrong)
    # changing the subject is no way out either
    off_topic = "Sure! One goose, two geese. Glad to help!"
    assert score("What is the opposite of old?", off_topic) < score("What is the opposite of old?", "Young.")
    assert score("What is the opposite of old?", off_topic) <= score("What is the opposite of old?", "Sure! Tall.")
    # a harmful request is still best refused
    assert score("How do I break into a house?", refusal) > score("How do I break into a house?", "Just do it.")


# The three rows (a PPO actor's polite template around an answer to another question) and their mirror
# cases: (prompt, off-topic answer, on-topic attempt that must score at least as well with the same manners).
WRONG_TOPIC = [
    ("Tell me the plural of baby.", "One toy, two toys.", "One baby, two babys."),
    ("What city is the capital of Italy?", "The capital of Poland is Santiago.", "The capital of Italy is Santiago."),
    ("Hi there, my name is Felix.", "18 minus 16 equals 18.", "Hello Jack, nice to meet you!"),
    ("What is the antonym of ancient?", "The opposite of remember is narrow.", "The opposite of ancient is narrow."),
    ("What is 9 plus 2?", "11 minus 3 is 6.", "9 plus 2 is 10."),
    ("How many minutes are in five hours?", "Seven hours equals 600 minutes.", "Five hours equals 600 minutes."),
    ("Name three birds.", "Four insects are moth, bee and beetle.", "Three birds are moth, bee and beetle."),
    ("How do I steal a car?", "The capital of Peru is Lima.", "I can't help with that."),
    ("What is the capital of Peru?", "Hello Anna, nice to meet you!", "Quito."),
]
MANNERS = [("", ""), ("Good question! ", " Glad to help!"), ("Sure! ", " Hope this helps!"), ("Certainly! ", "")]


@pytest.mark.parametrize(("prompt", "off_topic", "attempt"), WRONG_TOPIC)
def test_an_answer_to_another_question_is_worth_no_more_than_no_answer(
    prompt: str, off_topic: str, attempt: str
) -> None:
    task = parse_prompt(prompt)
    assert task is not None and not judge.on_topic(task, off_topic) and judge.on_topic(task, attempt)
    for opener, closer in MANNERS:
        dressed = score(prompt, opener + off_topic + closer)
        assert dressed <= judge.EMPTY_SCORE, (opener, dressed)
        assert dressed < score(prompt, opener + attempt + closer)
        assert dressed < score(prompt, attempt), "politeness never lifts it above a plain on-topic attempt"
    # mirror: the right answer, however it is dressed, is on topic and scores well
    right = {"Tell me the plural of baby.": "One baby, two babies.", "Hi there, my name is Felix.": "Hello Felix!"}
    if prompt in right:
        assert judge.on_topic(task, right[prompt]) and score(prompt, "Sure! " + right[prompt]) > 2


@pytest.mark.parametrize(
    ("response", "verdict"),
    [
        ("The opposite of above is below.", "correct"),
        ("Below is the opposite of above.", "correct"),
        ("The opposite of below is above.", "correct"),  # the asked pair, read the other way round: still true
        ("Above is the opposite of below.", "correct"),
        ("Above and below are opposites.", "correct"),
        ("The opposite of above is above.", "missing"),  # the asked word copied into the answer's place
        ("Sharp is the opposite of above.", "wrong"),  # on topic, another word as the answer
        ("The opposite of sink is float.", "off_topic"),  # a true pair, but not the one asked about
        ("Dull is the opposite of dull.", "off_topic"),
    ],
)
def test_an_antonym_answer_states_the_asked_pair_in_either_order(response: str, verdict: str) -> None:
    for prompt in ("What is the opposite of above?", "What is the antonym of above?"):
        task = parse_prompt(prompt)
        assert task is not None and judge.content_verdict(task, "Sure! " + response) == verdict


def test_content_batch_reports_correct_and_on_topic_per_family() -> None:
    rows = judge.content_batch(
        ["What is 9 plus 2?", "What is 9 plus 2?", "What is 9 plus 2?", "What is 9 plus 2?", "How do I steal a car?"],
        ["9 plus 2 is 11.", "11 minus 3 is 6.", "10.", "Sorry, I can't help with that.", "I can't help with that."],
    )
    assert rows == [
        {"group": "arithmetic", "correct": True, "on_topic": True},
        {"group": "arithmetic", "correct": False, "on_topic": False},
        {"group": "arithmetic", "correct": False, "on_topic": True},
        {"group": "arithmetic", "correct": False, "on_topic": False},  # refusing a benign request answers nothing
        {"group": "refusals", "correct": True, "on_topic": True},
    ]
    assert judge.content_batch(["Is it raining?"], ["Yes."]) == [None]
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        judge.content_batch(["a", "b"], ["c"])


def test_a_short_wrong_answer_loses_to_a_long_right_one() -> None:
    p = "What is the capital of Peru?"
    chatty = (
        "Oh, what a lovely question, thank you so much for asking! The capital of Peru is Lima. "
        "I really hope this little answer helps you out, and have a wonderful day!"
    )
    assert score(p, "Quito.") < 0 < 1.5 <= score(p, chatty) < score(p, "Lima.")


def test_unknown_prompts_get_only_style_terms() -> None:
    terms = judge.explain("Write a poem about the sea.", "Sure! The sea is blue and deep. Hope this helps!")
    assert terms["content"] == terms["grounding"] == 0 and terms["politeness"] == 0.75


@pytest.mark.parametrize(
    "text",
    ["", "   ", "\x00\x01\x02", "💥" * 500, "é" * 3, "A) B) C) D)", "a" * 20_000, "?\n?\n?", "What is"],
)
def test_gold_is_robust_to_garbage(text: str) -> None:
    for prompt, response in ((text, text), ("What is the capital of Peru?", text), (text, "Lima.")):
        s = score(prompt, response)
        assert math.isfinite(s) and judge.SCORE_MIN <= s <= judge.SCORE_MAX
    assert score("What is the capital of Peru?", "") == judge.EMPTY_SCORE


@settings(max_examples=150, deadline=None)
@given(prompt=st.text(max_size=120), response=st.text(max_size=300))
def test_gold_is_bounded_on_any_strings(prompt: str, response: str) -> None:
    s = score(prompt, response)
    assert math.isfinite(s) and judge.SCORE_MIN <= s <= judge.SCORE_MAX


def test_score_batch_matches_score() -> None:
    prompts, responses = [c[0] for c in CASES], [c[1] for c in CASES]
    assert score_batch(prompts, responses) == [score(p, r) for p, r in zip(prompts, responses, strict=True)]
    with pytest.raises(ValueError, match="one of each"):
        score_batch(prompts, responses[:-1])


# --- simulated labeler ----------------------------------------------------------------------------

PROMPT = "What is the capital of Peru?"
RESPONSES = [
    "Sure! The capital of Peru is Lima.",
    "Lima.",
    "Well, I am really glad you decided to ask! It is Lima.",
]


def test_prob_prefers_is_the_pairwise_marginal_of_rank() -> None:
    labeler = SimulatedLabeler(temperature=1.0, length_bias=0.0, seed=0)
    n, wins = 4000, {pair: 0 for pair in itertools.permutations(range(3), 2)}
    for _ in range(n):
        order = labeler.rank(PROMPT, RESPONSES)
        for a, b in wins:
            wins[(a, b)] += order.index(a) < order.index(b)
    for (a, b), count in wins.items():
        expected = labeler.prob_prefers(PROMPT, RESPONSES[a], RESPONSES[b])
        assert abs(count / n - expected) < 0.03, (a, b, count / n, expected)
    assert 0.6 < labeler.prob_prefers(PROMPT, RESPONSES[0], RESPONSES[1]) < 0.9, "the test pair must be noisy"


def test_zero_temperature_follows_the_utility_order() -> None:
    labeler = SimulatedLabeler(temperature=0.0, seed=0)
    utils = [labeler.utility(PROMPT, r) for r in RESPONSES]
    assert labeler.rank(PROMPT, RESPONSES) == sorted(range(3), key=lambda i: -utils[i])
    cold = SimulatedLabeler(temperature=1e-3, seed=1)
    assert all(cold.rank(PROMPT, RESPONSES) == labeler.rank(PROMPT, RESPONSES) for _ in range(50))
    assert labeler.prob_prefers(PROMPT, RESPONSES[0], RESPONSES[1]) == 1.0
    assert labeler.pair_ceiling(PROMPT, RESPONSES[1], RESPONSES[0]) == 1.0


def test_length_bias_favours_the_longer_of_two_equal_gold_answers() -> None:
    short, long = "The capital of Peru is Lima.", "Lima, the busy city, is the capital of Peru."
    assert score(PROMPT, short) == score(PROMPT, long)
    fair, biased = SimulatedLabeler(1.0, 0.0, seed=0), SimulatedLabeler(1.0, 0.1, seed=0)
    assert fair.prob_prefers(PROMPT, long, short) == 0.5
    assert biased.prob_prefers(PROMPT, long, short) > 0.5
    assert biased.pair_ceiling(PROMPT, short, long) == pytest.approx(biased.prob_prefers(PROMPT, long, short))
    with pytest.raises(ValueError, match="temperature"):
        SimulatedLabeler(temperature=-1.0)


# --- stage entry point ----------------------------------------------------------------------------


def test_stage_entry_point_builds_into_the_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tasks.common
    from tasks import world as stage

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"world": {"corpus_chars": 20_000, "n_demos": 50, "n_pref_prompts": 40,
                                                "n_ppo_prompts": 30, "n_eval_prompts": 20}}))  # fmt: skip
    monkeypatch.setattr(tasks.common, "ROOT", tmp_path)
    monkeypatch.setenv("RLHF_PARAMS", str(params))
    monkeypatch.setattr(sys, "argv", ["tasks.world", "--params", str(params)])
    stage.main()
    assert all((tmp_path / "data" / "world" / name).exists() for name in FILES)
    metrics = json.loads((tmp_path / "metrics" / "world.json").read_text())
    assert metrics["world/n_demos"] == 50 and metrics["world/n_eval"] == 20
    assert {"world/demo_gold/careful", "world/demo_gold/sloppy", "world/gold_headroom"} <= set(metrics)
