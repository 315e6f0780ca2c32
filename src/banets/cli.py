"""The ``banets`` command: demo | run | resume | report | presets | models."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from banets import config as configs
from banets import distributed
from banets.data.cifar import DataError
from banets.engine import DivergedError
from banets.experiment import resume_experiment, run_experiment
from banets.models.registry import list_models
from banets.report import read_runs, write_report
from banets.runs import RunError

USER_ERRORS = (configs.ConfigError, DataError, RunError, DivergedError, KeyError, FileNotFoundError)


def parse_seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes comma-separated integers such as 0,1,2, not {text!r}") from None


def build_config(args: argparse.Namespace) -> configs.ExperimentConfig:
    overrides = list(args.set or [])
    if args.data_dir:
        overrides.append(f"data.path={args.data_dir}")
    if args.seeds:
        overrides.append(f"seeds={args.seeds}")
    return configs.load_config(args.preset, overrides)


def report_and_print(out: Path, report_dir: Path, keep: bool = True) -> None:
    if not distributed.is_main():  # under torchrun, rank 0 reports
        return
    runs, skipped = read_runs([out])
    print(write_report(runs, report_dir, skipped=tuple(skipped)))
    if keep:
        print(f"report written to {report_dir}/report.md")


def cmd_demo(args: argparse.Namespace) -> None:
    args.preset = "demo"
    config = build_config(args)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="banets-demo-") as scratch:
        out = Path(args.out) if args.out else Path(scratch)
        run_experiment(config, out)
        report_and_print(out, out, keep=bool(args.out))
    if distributed.is_main():
        print(f"demo finished in {time.time() - started:.0f} s ({len(config.seeds)} seed(s), device {config.device})")


def cmd_run(args: argparse.Namespace) -> None:
    config = build_config(args)
    out = Path(args.out or f"runs/{config.name}")
    run_experiment(config, out)
    report_and_print(out, out)


def cmd_resume(args: argparse.Namespace) -> None:
    overrides = [*(args.set or []), *([f"data.path={args.data_dir}"] if args.data_dir else [])]
    resume_experiment(Path(args.dir), overrides)
    report_and_print(Path(args.dir), Path(args.dir))


def cmd_report(args: argparse.Namespace) -> None:
    runs, skipped = read_runs([Path(p) for p in args.dirs])
    out = Path(args.out or args.dirs[0])
    print(write_report(runs, out, skipped=tuple(skipped)))
    print(f"report written to {out}/report.md")


def cmd_presets(args: argparse.Namespace) -> None:
    if args.keys:
        print("\n".join(configs.all_keys(configs.ExperimentConfig)))
        return
    for name in configs.preset_names():
        values = configs.preset_dict(name)
        print(f"{name:32s} {values.get('cost', ''):28s} {values.get('description', '')}")


def cmd_models(args: argparse.Namespace) -> None:
    print("\n".join(list_models(args.pattern)))


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. optim.lr=0.05")
    parser.add_argument("--seeds", type=parse_seeds, help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument("--data-dir", help="local dataset folder or archive")
    parser.add_argument("--out", help="run directory")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="banets", description="Born Again Neural Networks: teachers, generations, ensembles")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="offline demo on scikit-learn's digits (CPU, about a minute)")
    add_config_arguments(demo)
    demo.set_defaults(func=cmd_demo)
    run = commands.add_parser("run", help="run a preset (see `banets presets`) or a YAML config file")
    run.add_argument("preset")
    add_config_arguments(run)
    run.set_defaults(func=cmd_run)
    resume = commands.add_parser("resume", help="continue a killed run from its last completed epoch",
                                 description="Continue a killed run with the config it was started with. --set may change "
                                             "only runtime keys (device, optim.progress, data.path) and ban.ensembles (evaluated "
                                             "from the saved models); a run with a failed model is refused: start a new "
                                             "run with the fix.")
    resume.add_argument("dir")
    resume.add_argument("--set", action="append", metavar="KEY=VALUE", help="a runtime key, e.g. device=cuda")
    resume.add_argument("--data-dir", help="where the dataset is now")
    resume.set_defaults(func=cmd_resume)
    report = commands.add_parser("report", help="tables from one or more run directories")
    report.add_argument("dirs", nargs="+")
    report.add_argument("--out", help="where to write report.md, its PNG plots, CSV and JSON (default: the first directory)")
    report.set_defaults(func=cmd_report)
    presets = commands.add_parser("presets", help="list the presets with their expected cost")
    presets.add_argument("--keys", action="store_true", help="list every config key instead")
    presets.set_defaults(func=cmd_presets)
    models = commands.add_parser("models", help="list the registered models")
    models.add_argument("pattern", nargs="?", default="*")
    models.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"banets: error: {message}", file=sys.stderr)
        return 1
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
