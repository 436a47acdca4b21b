"""Stage `prepare`: gather the inputs named in params.yaml `data` into the canonical files of data/prepared/.

"world" takes the synthetic world's file; any other value is a path to a user's file (JSONL, Parquet or CSV;
the corpus may also be a .txt of documents separated by blank lines), read with errors that name the file, the
row and the rule. Later stages read only data/prepared/, so swapping the world for real data is a params change.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.data import DataError, control_rule, read_demos, read_prompts, read_table, read_text
from rlhf.io import write_jsonl, write_text
from tasks.common import Params, build_dataclass, model_free_entry, params_path, path

OUT = "data/prepared"
WORLD = {
    "corpus": "data/world/corpus.txt",
    "demos": "data/world/demos.jsonl",
    "prompts_pref": "data/world/prompts_pref.jsonl",
    "prompts_ppo": "data/world/prompts_ppo.jsonl",
    "prompts_eval": "data/world/prompts_eval.jsonl",
}


@dataclass(frozen=True)
class DataParams:
    corpus: str = "world"
    """pretraining text: "world" or a .txt (documents separated by a blank line) / table with a `text` column"""
    demos: str = "world"
    """SFT demonstrations {prompt, response}"""
    prompts_pref: str = "world"
    """prompts whose SFT samples are ranked into preference pairs"""
    prompts_ppo: str = "world"
    """prompts PPO trains on"""
    prompts_eval: str = "world"
    """held-out prompts of the evaluation"""
    preferences: str = "world"
    """"world" (collected from the SFT model, ranked by the simulated labeler) or a user's preference file"""
    preferences_format: str = "auto"
    """trl | hh | ranked | auto, for a user's preference file"""


def source(cfg: DataParams, name: str):
    value = getattr(cfg, name)
    return path(WORLD[name] if value == "world" else value)


def corpus_documents(src) -> list[str]:
    if src.suffix == ".txt":
        text = read_text(src)
        for lineno, line in enumerate(text.split("\n"), start=1):
            if (rule := control_rule(line)) is not None:
                raise DataError(f"{src}: line {lineno}: {rule}")
        docs = text.split("\n\n")
    else:
        df = read_table(src)
        if "text" not in df.columns:
            raise DataError(f"{src}: a corpus table needs a 'text' column (found {list(df.columns)})")
        docs = [str(t) for t in df["text"]]
        for label, doc in zip(df.index, docs, strict=True):
            if (rule := control_rule(doc)) is not None:
                raise DataError(f"{src}: {df.index.name} {label}, column 'text': {rule}")
    docs = [d.strip() for d in docs if d.strip()]
    if not docs:
        raise DataError(f"{src}: the corpus has no documents")
    return docs


def run(cfg: DataParams) -> dict:
    out = path(OUT)
    docs = corpus_documents(source(cfg, "corpus"))
    demos = read_demos(source(cfg, "demos"))
    prompts = {n: read_prompts(source(cfg, n)) for n in ("prompts_pref", "prompts_ppo", "prompts_eval")}
    # Everything is read and checked before anything is written: a bad file leaves data/prepared untouched.
    write_text(out / "corpus.txt", "\n\n".join(docs) + "\n")
    extra = [c for c in ("id", "family", "labeler") if c in demos.columns]
    write_jsonl(out / "demos.jsonl", demos[["prompt", "response", *extra]].to_dict("records"))
    for name, df in prompts.items():
        write_jsonl(out / f"{name}.jsonl", df.to_dict("records"))
    return {"documents": len(docs), "demos": len(demos), **{n: len(df) for n, df in prompts.items()}}


KEYS = ("corpus", "demos", "prompts_pref", "prompts_ppo", "prompts_eval")
"""the keys of `data` this stage reads (the preference keys are the preferences stage's)"""


def configure(p: Params) -> DataParams:
    return build_dataclass(DataParams, {k: p.value(f"data.{k}") for k in KEYS}, f"{params_path()}:data")


main = model_free_entry("prepare", __doc__, configure, run)


if __name__ == "__main__":
    main()
