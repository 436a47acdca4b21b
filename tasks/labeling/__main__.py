"""bin/label: the labeling app and its commands.

bin/label [serve] [--host 127.0.0.1] [--port 8600]     the web app for labelers
bin/label prepare --n 50 [--k K] [--max-labelers 1]    tasks from the champion's answers (K: preferences.k)
bin/label export                                       finished rankings -> data/incoming/labels-<ts>.jsonl
bin/label stats                                        metrics/labels.json
bin/label export-label-studio --out tasks.json         tasks + labeling config for Label Studio
bin/label import-label-studio EXPORT.json              a Label Studio export -> data/incoming/
bin/label crowd [--labelers 5] [--max-tasks N]         simulated labelers ranking through the app
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rlhf.data import DataError
from tasks.common import load_params, params_path, path, workdir
from tasks.labeling import db
from tasks.labeling.export import REWARD_MODEL, export_all, load_reward_judge, write_stats


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from tasks.labeling.app import create_app

    rm = None if args.reward_model == "none" else path(args.reward_model)
    app = create_app(args.db, (lambda: load_reward_judge(rm)) if rm else None)
    print(f"[label] http://{args.host}:{args.port}/  (database {args.db}; stats at /stats)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def run_command(args: argparse.Namespace) -> dict[str, Any] | None:
    if args.command == "prepare":
        from tasks.labeling.prepare import PrepareConfig, prepare

        # k, length and temperature default to the pipeline's own collection (params.yaml `preferences`), so
        # people rank the same kind of samples the simulated labeler does
        prefs = load_params().get("preferences", {}) if params_path().exists() else {}
        sampling = {key: getattr(args, key) for key in ("k", "max_new_tokens", "temperature")}
        sampling = {key: prefs.get(key, PrepareConfig.__dataclass_fields__[key].default) if v is None else v
                    for key, v in sampling.items()}  # fmt: skip
        cfg = PrepareConfig(n=args.n, max_labelers=args.max_labelers, seed=args.seed, **sampling)
        model = path(args.model) if args.model else None
        return prepare(db.connect(args.db), workdir(), path(args.prompts), cfg, model)
    if args.command == "export":
        return export_all(args.db)
    if args.command == "stats":
        return write_stats(db.connect(args.db), workdir())
    if args.command == "export-label-studio":
        from tasks.labeling.labelstudio import export_tasks

        return export_tasks(db.connect(args.db), Path(args.out))
    if args.command == "import-label-studio":
        from tasks.labeling.labelstudio import import_export

        return import_export(Path(args.file), path("data/incoming"))
    if args.command == "crowd":
        from tasks.labeling import crowd

        return crowd.run(args.url, crowd.crowd(args.labelers, args.skip_rate, args.seed), args.max_tasks)
    serve(args)
    return None


def server_options(p: argparse.ArgumentParser, default: bool) -> None:
    # Given before or after `serve` alike: the subcommand's copies leave the value alone when absent.
    def d(value: Any) -> Any:
        return value if default else argparse.SUPPRESS

    p.add_argument("--host", default=d("127.0.0.1"), help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=d(8600), help="port (default 8600)")
    p.add_argument("--reward-model", default=d(REWARD_MODEL), help="compared with people on /stats ('none': off)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bin/label", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    db_help = f"the labeling database (default: {db.DEFAULT_DB})"
    p.add_argument("--db", type=Path, default=None, help=db_help)
    server_options(p, default=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", type=Path, default=argparse.SUPPRESS, help=db_help)
    sub = p.add_subparsers(dest="command")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, parents=[common])

    server_options(command("serve", "the web app (the default command)"), default=False)
    s = command("prepare", "sample the champion's answers into tasks")
    s.add_argument("--n", type=int, default=50, help="prompts (tasks) to add")
    s.add_argument("--k", type=int, default=None, help="responses per task (default: preferences.k)")
    s.add_argument("--max-labelers", type=int, default=1, help="people each task is served to")
    s.add_argument("--prompts", default="data/prepared/prompts_pref.jsonl", help="a prompt file {prompt[, id]}")
    s.add_argument("--model", default=None, help="a checkpoint dir instead of rlhf-actor@champion / models/sft")
    s.add_argument("--max-new-tokens", type=int, default=None, help="default: preferences.max_new_tokens")
    s.add_argument("--temperature", type=float, default=None, help="default: preferences.temperature")
    s.add_argument("--seed", type=int, default=0)
    command("export", "finished rankings -> data/incoming/labels-<timestamp>.jsonl")
    command("stats", "write metrics/labels.json")
    s = command("export-label-studio", "tasks and labeling config for Label Studio")
    s.add_argument("--out", required=True)
    s = command("import-label-studio", "a Label Studio JSON export -> data/incoming/")
    s.add_argument("file")
    s = command("crowd", "simulated labelers ranking through a running app")
    s.add_argument("--url", default="http://127.0.0.1:8600")
    s.add_argument("--labelers", type=int, default=5)
    s.add_argument("--max-tasks", type=int, default=None, help="stop after this many rankings")
    s.add_argument("--skip-rate", type=float, default=0.0)
    s.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.db = path(args.db or db.DEFAULT_DB)
    try:
        result = run_command(args)
    except (DataError, FileNotFoundError, ValueError) as e:
        print(f"bin/label {args.command}: {e}", file=sys.stderr)
        return 2
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
