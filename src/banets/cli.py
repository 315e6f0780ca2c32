"""The ``banets`` command: demo | run | resume | report | presets | models | datasets | tokenize | shard.

The command line only parses arguments into the config the Python API takes and calls ``experiment``; a user
error (a :class:`~banets.config.UserError`) prints one line naming the problem and the fix and exits 1, an
interrupt prints how to continue and exits 130.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import NoReturn

from banets import __version__, distributed
from banets import config as configs
from banets.data.registry import list_datasets
from banets.data.shards import write_shards
from banets.data.tokens import write_token_files
from banets.experiment import (
    import_modules,
    recorded_modules,
    report_runs,
    resume_experiment,
    run_experiment,
)
from banets.models.registry import describe_models
from banets.report import summary_table
from banets.runs import REPORT_DIR, os_error_message

INTERRUPTED = 130  # the shell's exit status for SIGINT


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        raise argparse.ArgumentTypeError(f"--seeds takes comma-separated integers such as 0,1,2, not {text!r}")
    return seeds


def build_config(args: argparse.Namespace) -> configs.ExperimentConfig:
    overrides = list(args.set or [])
    if args.data_dir:  # recorded absolute, so a resume from another folder finds the data
        overrides.append(f"data.path={configs.absolute_path(args.data_dir)}")
    if args.seeds is not None:
        overrides.append(f"seeds={args.seeds}")
    config = configs.load_config(args.preset, overrides)
    config.imports = [*config.imports, *(args.imports or [])]
    return config


def print_report(paths: list[Path], folder: Path, where: str = "") -> None:
    """Write the report of the runs below ``paths`` into ``folder`` and print its summary table and where it is."""
    runs = report_runs(paths, folder)
    print(summary_table(runs, legend=True))
    print(f"\nreport, plots and CSV tables: {folder}/report.md{where}")


def report_and_print(out: Path, demo: bool = False) -> None:
    """The report of the run in ``out``, into ``out/report``; under torchrun, rank 0 alone reports."""
    if distributed.is_main():
        print_report([out], out / REPORT_DIR, "" if demo else f"; output folder: {out}")


def cmd_demo(args: argparse.Namespace) -> None:
    args.preset = "demo"
    config = build_config(args)
    out = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    args.dir = out  # what an interrupt's hint names
    started = time.time()
    if distributed.is_main():
        print(
            f"banets demo: digits, a small CNN, {len(config.seeds)} seed(s); output folder {out} (--out to "
            "choose another)"
        )
    run_experiment(config, out)
    report_and_print(out, demo=True)
    if distributed.is_main():
        print(
            f"demo finished in {time.time() - started:.0f} s ({len(config.seeds)} seed(s), device {config.device}); "
            f"output folder {out}"
        )


def cmd_run(args: argparse.Namespace) -> None:
    config = build_config(args)
    out = Path(args.out or f"runs/{config.name}")
    args.dir, args.vouched = out, recorded_modules(config)  # what an interrupt's hint names
    run_experiment(config, out)
    report_and_print(out)


def cmd_resume(args: argparse.Namespace) -> None:
    overrides = [*(args.set or []), *([f"data.path={configs.absolute_path(args.data_dir)}"] if args.data_dir else [])]
    import_modules(args.imports or [])
    args.vouched = args.imports or []
    ran = resume_experiment(Path(args.dir), overrides, args.imports or [], trust_imports=args.trust_imports)
    if not ran and distributed.is_main():
        print(f"{args.dir}: every seed is finished; nothing to train")
    report_and_print(Path(args.dir))


def cmd_report(args: argparse.Namespace) -> None:
    print_report([Path(p) for p in args.dirs], Path(args.out or Path(args.dirs[0]) / REPORT_DIR))


def cmd_presets(args: argparse.Namespace) -> None:
    if args.keys:
        print("\n".join(configs.all_keys(configs.ExperimentConfig)))
        return
    for name in configs.preset_names():
        values = configs.preset_dict(name)
        print(f"{name:32s} {values.get('cost', ''):28s} {values.get('description', '')}")


def cmd_models(args: argparse.Namespace) -> None:
    import_modules(args.imports or [])
    print(describe_models(args.pattern))


def cmd_datasets(args: argparse.Namespace) -> None:
    import_modules(args.imports or [])
    for name, entry in list_datasets().items():
        options = ", ".join(sorted(entry.options - {"dataset", "batch_size", "eval_batch_size"}))
        print(f"{name:12s} {entry.summary}\n{'':12s} options: {options}")


def cmd_tokenize(args: argparse.Namespace) -> None:
    record = write_token_files(Path(args.corpus), Path(args.out), args.tokenizer, args.max_vocab)
    counts = ", ".join(f"{split} {count:,}" for split, count in record["tokens"].items())
    print(f"{args.out}: {counts} tokens as {record['dtype'][1:]}; train with --set data.dataset=tokens "
          f"--data-dir {args.out}")


def cmd_shard(args: argparse.Namespace) -> None:
    record = write_shards(Path(args.images), Path(args.out), args.shard_size)
    counts = ", ".join(f"{split} {len(shards)} shard(s)" for split, shards in record["splits"].items())
    print(f"{args.out}: {counts}; train with --set data.dataset=shards --data-dir {args.out}")


def add_import_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        help="import a Python module first (its registered models, datasets and losses); repeatable",
    )


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. optim.lr=0.05")
    parser.add_argument("--seeds", type=parse_seeds, help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument("--data-dir", help="local dataset folder, archive or file")
    parser.add_argument("--out", help="output folder: one seed directory per seed, and the report")
    add_import_argument(parser)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) that point to ``--help``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"banets: error: {message}; see `{self.prog} --help`\n")


def one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     line: str | None = None) -> str:
    return f"banets: warning: {message}\n"


def make_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="banets", description="Born Again Neural Networks: teachers, generations, ensembles")
    parser.add_argument("--version", action="version", version=f"banets {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    demo = commands.add_parser("demo", help="offline demo on scikit-learn's digits (CPU, about a minute)")
    add_config_arguments(demo)
    demo.set_defaults(func=cmd_demo)
    run = commands.add_parser("run", help="run a preset (see `banets presets`) or a YAML config file")
    run.add_argument("preset", help="a preset name (`banets presets` lists them) or a YAML config file")
    add_config_arguments(run)
    run.set_defaults(func=cmd_run)
    resume = commands.add_parser(
        "resume",
        help="continue a killed run from its last completed epoch",
        description="Continue a killed run with the config it was started with. --set may change "
        "only runtime keys (device, optim.progress, data paths, model.teacher_checkpoint) and ban.ensembles "
        "(evaluated from the saved models); a run with a failed model is refused: start "
        "a new run with the fix.",
    )
    resume.add_argument("dir", help="the output folder (the --out of `banets run`)")
    resume.add_argument("--set", action="append", metavar="KEY=VALUE", help="a runtime key, e.g. device=cuda")
    resume.add_argument("--data-dir", help="where the dataset is now")
    add_import_argument(resume)
    resume.add_argument(
        "--trust-imports",
        action="store_true",
        help="import the modules the run's config.yaml names even when they are neither installed nor "
        "given with --import (only for an output folder you trust: importing runs its code)",
    )
    resume.set_defaults(func=cmd_resume)
    report = commands.add_parser("report", help="tables and plots from one or more output folders")
    report.add_argument("dirs", nargs="+", help="output folders, seed directories, or folders holding them")
    report.add_argument("--out", help=f"where to write report.md, its plots, CSV and JSON (default: DIR/{REPORT_DIR})")
    report.set_defaults(func=cmd_report)
    presets = commands.add_parser("presets", help="list the presets with their expected cost")
    presets.add_argument("--keys", action="store_true", help="list every config key instead")
    presets.set_defaults(func=cmd_presets)
    models = commands.add_parser("models", help="list the registered models with their parameters")
    models.add_argument("pattern", nargs="?", default="*", help="a name pattern, e.g. 'wrn*' (default: all)")
    add_import_argument(models)
    models.set_defaults(func=cmd_models)
    datasets = commands.add_parser("datasets", help="list the registered datasets and the data.* options each uses")
    add_import_argument(datasets)
    datasets.set_defaults(func=cmd_datasets)
    tokenize = commands.add_parser("tokenize", help="write a text corpus as token files, read from disk in training")
    tokenize.add_argument("corpus", help="a folder holding prefix.train.txt, prefix.valid.txt, prefix.test.txt")
    tokenize.add_argument("--out", required=True, help="the folder to write {train,valid,test}.bin, vocab.json into")
    tokenize.add_argument("--tokenizer", default="whitespace", help="whitespace (pre-tokenised, PTB) or words (raw)")
    tokenize.add_argument("--max-vocab", type=int, default=10000, help="vocabulary cap, counting <unk> and <eos>")
    tokenize.set_defaults(func=cmd_tokenize)
    shard = commands.add_parser("shard", help="write an image folder as WebDataset tar shards, read by index")
    shard.add_argument("images", help="a folder of class sub-folders of images, or of train/, val/, test/ of them")
    shard.add_argument("--out", required=True, help="the new folder to write <split>-NNNNNN.tar and indexes into")
    shard.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    shard.set_defaults(func=cmd_shard)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = one_line_warning
    args = make_parser().parse_args(argv)
    try:
        args.func(args)
        distributed.shutdown(finished=True)
    except configs.UserError as error:
        print(f"banets: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `banets models | head`: the reader left; say nothing more
        sys.stdout = open(os.devnull, "w")
        return 0
    except OSError as error:  # a full disk, a read-only folder, a name too long: the cause, not a traceback
        print(f"banets: error: {os_error_message(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        where = getattr(args, "dir", None) or getattr(args, "out", None)
        imports = "".join(f" --import {name}" for name in getattr(args, "vouched", []))
        resumable = where and args.command in ("run", "demo", "resume")
        hint = f"; continue with `banets resume {where}{imports}`" if resumable else ""
        print(f"\nbanets: interrupted{hint}", file=sys.stderr)
        return INTERRUPTED
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
