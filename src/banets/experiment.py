"""One path from a configuration, or your own model and data, to a finished run.

``banets run`` and ``banets resume`` build a :class:`Setup` from the config (a registered dataset and model);
the Python API :func:`born_again` builds one from what you pass (a model factory, tensors, a Dataset or a
DataLoader). Both then go through :func:`run`: everything checkable is checked before anything is written
(config values, data, losses, one batch through the models, the output folder), then each seed trains into
its own seed directory ``out/seed-<s>`` (or into memory without ``out``). Under torchrun every process trains
and evaluates; rank 0 alone writes.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from banets import distributed, preflight
from banets.config import (
    PYTHON,
    BornAgainConfig,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    TrainConfig,
    UserError,
    config_of,
    from_dict,
)
from banets.data.batches import as_batches, given_tensors_record, is_pair
from banets.data.registry import Data, Transform, build_dataset
from banets.engine import DivergedError, check_recipe, check_schedulable
from banets.ensemble import evaluate_with_ensembles
from banets.generations import (
    BornAgainResult,
    Driver,
    MemoryStore,
    ModelFn,
    ReadOnlyStore,
    Setup,
    plan_ensembles,
    plan_generations,
    saved_weights_of,
    trained_part,
)
from banets.metrics import Predictions
from banets.models.registry import HF, TIMM, create_model, model_parameters, options_from_data
from banets.preflight import build_model, first_batch
from banets.report import SeedRun, read_run, read_runs, seed_run_of, summarize, write_report
from banets.runs import (
    REPORT_DIR,
    RunError,
    SeedDirectory,
    config_record,
    is_seed_dir,
    seed_dir,
    seed_dirs,
    seed_of,
)
from banets.teacher import load_teacher_weights
from banets.user_code import SetupError, check_recorded_modules, import_modules

# -- from a config: registered datasets and models -------------------------------------------------------


def model_factory(name: str, options: dict, data_options: dict) -> ModelFn:
    """A factory for model ``name``: the config's options plus those derived from the data that it takes."""
    accepted = model_parameters(name)
    unknown = sorted(set(options) - accepted) if accepted is not None else []
    if accepted is not None and unknown:
        raise SetupError(f"model {name!r} takes no option {', '.join(unknown)}; it takes {', '.join(sorted(accepted))}")
    takes = options_from_data(name)  # a timm or transformers model takes any option, and these from the data
    derived = {k: v for k, v in data_options.items() if k in takes and k not in options}
    return lambda: create_model(name, **derived, **options)


def teacher_factory(cfg: ModelConfig, data_options: dict) -> ModelFn | None:
    """A factory for a teacher of another architecture, checked to predict the students' classes from the same
    inputs."""
    if not cfg.teacher_name:
        return None
    for key in ("num_classes", "in_channels"):
        ours, theirs = (
            options.get(key, data_options.get(key)) if key in (model_parameters(name) or {key}) else None
            for name, options in ((cfg.name, cfg.options), (cfg.teacher_name, cfg.teacher_options))
        )
        if None not in (ours, theirs) and ours != theirs:
            raise SetupError(
                f"teacher {cfg.teacher_name} has {key}={theirs} but the students ({cfg.name}) have {key}={ours}; "
                f"teacher and students must share classes and inputs"
            )
    return model_factory(cfg.teacher_name, cfg.teacher_options, data_options)


def check_made_from_a_config(config: ExperimentConfig) -> None:
    if config.data.dataset == PYTHON:
        raise RunError(
            "this run was made from Python with its own model and data; continue it from Python with "
            "born_again(..., out=DIR, resume=True)"
        )


def setup_from_config(config: ExperimentConfig) -> Setup:
    """The data and models a config names, built and checked (nothing is written)."""
    check_made_from_a_config(config)
    import_modules(config.imports)
    data = build_dataset(config.data)
    student_fn = model_factory(config.model.name, config.model.options, data.model_options)
    teacher_fn = teacher_factory(config.model, data.model_options)
    teacher = None
    if config.model.teacher_checkpoint:
        teacher = build_model(teacher_fn or student_fn, "the teacher")
        load_teacher_weights(teacher, config.model.teacher_checkpoint)
    return Setup(student_fn, data, teacher_fn, teacher)


# -- one path for every run -------------------------------------------------------------------------------


@dataclass
class BornAgainRun:
    """The result of :func:`born_again` or ``banets run``: per seed, the trained models and their predictions.

    ``rows(split)`` gives the report's rows (mean and SD over seeds, the paired difference to the teacher with its
    95% interval), read back from ``out`` when the run has one; ``models`` are the first seed's trained models.
    """

    config: ExperimentConfig
    results: dict[int, BornAgainResult]
    data_record: dict  # Data.record(): the metric and bootstrap block of the report
    out: Path | None = None

    @property
    def models(self) -> dict[str, nn.Module]:
        return self.results[self.config.seeds[0]].models

    def rows(self, split: str = "val") -> list[dict]:
        if self.out is not None:
            return summarize(read_runs([self.out])[0], split)
        return summarize(
            [seed_run_of(self.config, seed, result, self.data_record) for seed, result in self.results.items()], split
        )


def run(config: ExperimentConfig, setup: Setup, out: Path | None = None, resume: bool = False) -> BornAgainRun:
    """Check everything, then train and evaluate every seed of ``config`` on ``setup``, each into ``out/seed-<s>``
    (nothing is written without ``out``). ``resume`` continues the seeds ``out`` already holds."""
    preflight.check_recordable(config)
    device = preflight.available_device(config.device)
    distributed.init_from_env(device)
    preflight.check_batch_split(config.data.batch_size)
    preflight.check_plan(plan_generations(config.ban, config.seeds[0]), config.ban, setup, device)
    check_schedulable(config.optim, setup.data.train)
    check_recipe(config.optim, setup.student_fn)
    refused = None
    if out is not None and distributed.is_main():
        try:
            preflight.prepare_out(Path(out), config, setup.data, resume)
        except UserError as error:
            refused = error
    if distributed.any_process(refused is not None):  # every process stops, not only rank 0
        raise refused or RunError(f"rank 0 refused --out {out}; its message says why")
    results = {}
    for i, seed in enumerate(config.seeds):
        run_dir = seed_dir(Path(out), seed) if out is not None else None
        results[seed] = run_seed(
            config, setup, seed, run_dir, device, label=f"seed {seed} [{i + 1}/{len(config.seeds)}]"
        )
    return BornAgainRun(config, results, setup.data.record(), Path(out) if out is not None else None)


def run_seed(
    config: ExperimentConfig, setup: Setup, seed: int, run_dir: Path | None, device: torch.device, label: str = ""
) -> BornAgainResult:
    """Train and evaluate one seed's plan, into ``run_dir`` when given; what the directory holds is not redone."""
    main = distributed.is_main()
    with distributed.main_first():  # rank 0 creates the directory, then the others read it
        store = SeedDirectory(run_dir, read_only=not main) if run_dir is not None else MemoryStore()
        if main and isinstance(store, SeedDirectory) and not store.exists():
            store.start(config_record(config, seeds=[seed]), setup.data, config.seeds)
    plan = plan_generations(config.ban, seed)
    ensembles = plan_ensembles(plan, config.ban)
    driver = Driver(setup, config.optim, config.ban, device, store=store if main else ReadOnlyStore(store), label=label)
    try:
        models = driver.run(plan)
    except DivergedError as error:
        if main and isinstance(store, SeedDirectory):
            store.mark_failed(error.model, str(error))
        raise
    plan, ensembles = trained_part(plan, ensembles, driver.stopped_after)  # ban.generations=auto may stop early
    predictions = evaluate_splits(models, ensembles, setup.data, device, config.optim)
    result = BornAgainResult(models, plan, ensembles, predictions, driver.histories)
    if main and isinstance(store, SeedDirectory):
        save_result(store, config, result, setup.data.unreadable() if setup.data.unreadable else [])
    return result


def evaluate_splits(models: dict[str, nn.Module], ensembles: dict[str, list[str]], data: Data, device: torch.device,
                    optim: TrainConfig) -> dict[str, dict[str, Predictions]]:
    """Every model's and ensemble's predictions on the validation, test and training examples (those there are)."""
    splits = {("val", "validation"): data.val, ("test", "test"): data.test, ("train", "training"): data.train_eval}
    return {
        split: evaluate_with_ensembles(models, ensembles, batches, device, optim, data.transform, named)
        for (split, named), batches in splits.items()
        if batches is not None
    }


def save_result(
    store: SeedDirectory, config: ExperimentConfig, result: BornAgainResult, unreadable: list[str]
) -> None:
    """Predictions, ensembles and the examples left out as ``unreadable`` into the seed directory, then
    ``results.json``: the report's rows of this seed, computed from what the directory now holds. ``results.json``
    goes first and comes back last, so a kill in between leaves a run that a resume evaluates again."""
    (store.root / "results.json").unlink(missing_ok=True)
    for split, predictions in result.predictions.items():
        store.save_predictions(split, predictions)
    store.record_ensembles(result.ensembles, config.ban.ensembles)
    if unreadable:
        store.record_unreadable(unreadable)
    seed_run = read_run(store.root)
    store.save_results({split: summarize([seed_run], split) for split in result.predictions})


# -- the command line --------------------------------------------------------------------------------------


def run_experiment(config: ExperimentConfig, out: Path | None, resume: bool = False) -> BornAgainRun:
    """``banets run``: every seed of ``config`` on the dataset and models it names, each into ``out/seed-<seed>``."""
    return run(config, setup_from_config(config), out, resume)


def model_modules(config: ExperimentConfig) -> list[str]:
    """The modules building a config's models imports: ``imports:``, timm for ``timm:`` models (whose options may
    make it read or download weights) and transformers for ``hf:`` models (which read a folder outside the run)."""
    models = [config.model.name, config.model.teacher_name or ""]
    libraries = {TIMM: "timm", HF: "transformers"}
    return [*config.imports, *dict.fromkeys(libraries[route] for route in libraries
                                            for name in models if name.startswith(route))]


def recorded_modules(config: ExperimentConfig) -> list[str]:
    """The modules a config imports: those of its models and of its ``module:function`` losses, optimizer and
    schedule."""
    functions = (config.ban.loss, *config.ban.extra_losses, config.optim.optimizer, config.optim.schedule)
    named = [name for name in functions if isinstance(name, str) and ":" in name]
    return [*model_modules(config), *(name.partition(":")[0] for name in named)]


def resume_experiment(out: Path, overrides: Sequence[str] = (), imports: Sequence[str] = (),
                      trust_imports: bool = False) -> list[int]:
    """``banets resume``: continue every seed of the run in ``out`` with the config it was started with, and start
    the seeds an interruption never reached (each seed directory records the run's seeds); ``overrides`` may change
    runtime keys and the ensembles only. A finished seed with nothing new to evaluate needs neither its data nor its
    models. The modules the run records are imported only when given again in ``imports`` (``--import``, imported
    already) or with ``trust_imports``; a recorded ``data.download`` is off unless ``overrides`` turn it on.
    Returns the seeds that ran."""
    dirs = seed_dirs(out)
    recorded = {seed: d for d in dirs if (seed := seed_of(d)) is not None}
    planned = sorted(set(recorded) | {s for d in dirs for s in SeedDirectory(d).run_seeds})
    ran = []
    for seed in planned:
        saved = SeedDirectory(recorded.get(seed, dirs[0])).config()  # verified: the config the run wrote
        config = config_of(saved, ["data.download=false", *overrides])  # a run's word fetches nothing
        if config.seeds != config_of(saved).seeds:
            raise RunError(
                f"a resume continues the seeds {out} was started with ({', '.join(map(str, planned))}); add "
                f"seeds with `banets run ... --seeds N --out {out}`"
            )
        config = replace(config, seeds=[seed])
        if seed in recorded:
            directory = SeedDirectory(recorded[seed], read_only=not distributed.is_main())
            directory.check_resumable(config_record(config))  # the overrides change runtime keys only
            plan = plan_generations(config.ban, seed)
            plan, ensembles = trained_part(plan, plan_ensembles(plan, config.ban), directory.stopped_after)
            if directory.is_finished([s.name for s in plan], ensembles):
                continue
        check_made_from_a_config(config)
        if not trust_imports:
            check_recorded_modules(recorded_modules(config), Path(out), imports,
                                   "give it again with --import {name}, or pass --trust-imports")
        run(config, setup_from_config(config), Path(out), resume=True)
        ran.append(seed)
    return ran


# -- the Python API ------------------------------------------------------------------------------------------


def born_again(
    model_fn: ModelFn, train: Any, val: Any, test: Any = None, *, ban: BornAgainConfig | None = None,
    optim: TrainConfig | None = None, seeds: int | Sequence[int] = 0, out: str | Path | None = None,
    resume: bool = False, teacher: nn.Module | None = None, teacher_fn: ModelFn | None = None, batch_size: int = 128,
    transform: Transform | None = None, label_key: str | None = None, device: str = "auto", name: str = "custom",
) -> BornAgainRun:
    """Train a teacher (or take ``teacher``, already trained), then its born-again generations, and evaluate all.

    ``model_fn`` builds a fresh student (a factory such as ``lambda: MyNet()``, returning logits); ``teacher_fn``
    builds a teacher of another architecture. ``train``, ``val`` and ``test`` are ``(x, y)`` tensors or NumPy
    arrays, Datasets, DataLoaders or any iterable of ``(x, y)`` batches; ``batch_size`` batches tensors and
    Datasets. A batch (or an example) may be a dict, such as a Hugging Face ``BatchEncoding``: its labels are
    under ``label_key`` (by default ``labels``, ``label``, ``y``, ``target`` or ``targets``) and the rest are
    given to the model by name, ``model(**inputs)``; ``x`` of an ``(x, y)`` pair may be named tensors too. A model
    returns logits as a tensor, a tuple (the first element) or an object with ``.logits``. ``ban`` is the plan
    (generations, losses, controls, ensembles; :class:`~banets.config.BornAgainConfig`), ``optim`` the training recipe
    (:class:`~banets.config.TrainConfig`: 10 epochs by default); without ``ban``, three generations, the
    teacher-free control CE and the plain ensemble of equal cost T+CE (:func:`measuring_plan`). Everything is
    checked before the first epoch.

    With ``out``, each seed trains into its seed directory ``out/seed-<s>``, as ``banets run`` does, and the report
    goes to ``out/report/report.md``; ``resume=True`` continues a run that was interrupted. Without ``out`` nothing is
    written.
    """
    optim, ban = optim or TrainConfig(), ban or measuring_plan()
    data_config = DataConfig(dataset=PYTHON, batch_size=batch_size, eval_batch_size=batch_size)  # checked first
    data = given_data(train, val, test, batch_size, transform, label_key)
    architecture = type(build_model(model_fn, "model_fn")).__name__
    # seeds that are neither an int nor a sequence stay as they are, for the config's check to refuse
    seed_list = [seeds] if isinstance(seeds, int) else list(seeds) if isinstance(seeds, Sequence) else seeds
    config = ExperimentConfig(name=name, seeds=seed_list, device=device, data=data_config,
                              model=ModelConfig(name=f"{PYTHON}:{architecture}"), optim=optim, ban=ban)
    try:
        result = run(config, Setup(model_fn, data, teacher_fn, teacher), Path(out) if out is not None else None, resume)
    except KeyboardInterrupt:
        if out is not None and distributed.is_main():  # what `banets run` says on Ctrl-C, in Python's words
            print(f"\nbanets: interrupted; continue with born_again(..., out={str(out)!r}, resume=True)",
                  file=sys.stderr)
        raise
    if out is not None and distributed.is_main():  # the report `banets run` writes: out/report/report.md
        report_runs([Path(out)], Path(out) / REPORT_DIR)
    return result


def measuring_plan() -> BornAgainConfig:
    """:func:`born_again`'s plan when none is given: three generations beside what tells a gain from training more
    models, a teacher-free control of another seed (CE), and with it the plain ensemble of equal cost (T+CE)."""
    return BornAgainConfig(controls={"CE": {}})


def given_data(train: Any, val: Any, test: Any, batch_size: int, transform: Transform | None,
               label_key: str | None = None) -> Data:
    """The data given to :func:`born_again` as batches, with what a resume compares (their fingerprints) and how
    the report scores models: by perplexity when labels are sequences (a language model), resampling whole rows.
    Training examples given in memory, an ``(x, y)`` pair, are scored at the end too, in order and unaugmented, for
    the teacher's generalisation gap in the report; a Dataset or DataLoader of your own is not read again (it may
    augment, and it may be large)."""
    train_batches = as_batches(train, batch_size, shuffle=True, what="train", label_key=label_key)
    data = Data(
        train=train_batches,
        val=as_batches(val, batch_size, shuffle=False, what="val", label_key=label_key),
        test=as_batches(test, batch_size, shuffle=False, what="test", label_key=label_key),
        train_eval=as_batches(train, batch_size, shuffle=False, what="train") if is_pair(train) else None,
        transform=transform,
    )
    data.files = given_tensors_record(train=data.train, val=data.val, test=data.test)
    labels = first_batch(train_batches, "training")[1]
    if labels.dim() > 1:
        data.metric, data.block = "perplexity", labels.shape[-1]
    return data


def report_runs(paths: list[Path], folder: Path) -> list[SeedRun]:
    """Write the report of the finished runs below ``paths`` into ``folder``; each run skipped (unfinished, failed,
    damaged) is a warning and a line of the report. Returns the runs reported."""
    runs, skipped = read_runs(paths)
    for note in [*(f"skipped {note}" for note in skipped), *dict.fromkeys(r.apart for r in runs if r.apart)]:
        warnings.warn(note, stacklevel=2)
    write_report(runs, folder, skipped=tuple(skipped))
    return runs


def load(
    run_dir: str | Path, name: str, seed: int | None = None, model_fn: ModelFn | None = None, trust_code: bool = False
) -> nn.Module:
    """The trained model ``name`` (``"teacher"``, ``"BAN-2"``, ...) of a run, in evaluation mode.

    ``run_dir`` is a run's ``--out`` (``seed`` picks the seed, by default the first) or one seed directory. The
    model is rebuilt from the run's recorded config; a run made from Python with its own model needs ``model_fn``.
    A module the run records (``imports:``) is imported only when you imported it already or it is installed;
    ``trust_code=True`` imports it from wherever it is found.
    """
    if not isinstance(name, str):
        raise RunError(f"load takes one model name such as 'teacher' or 'BAN-2', not {name!r}; call it once per model")
    root = Path(run_dir)
    seed_dir = (
        root
        if is_seed_dir(root)
        else next((d for d in seed_dirs(root) if seed is None or seed_of(d) == seed), None)
    )
    if seed_dir is None:
        raise RunError(f"{root} holds no seed {seed}; its seeds are {', '.join(d.name for d in seed_dirs(root))}")
    if not (seed_dir / "config.yaml").is_file():
        raise RunError(f"{seed_dir} has no config.yaml; it is not a complete banets run")
    directory = SeedDirectory(seed_dir)
    config = from_dict(ExperimentConfig, directory.config())  # verified: the config the run wrote
    entry, state = directory.finished_state(name)
    if model_fn is None:
        if not trust_code:
            check_recorded_modules(model_modules(config), root, sys.modules,
                                   "import {name} yourself before calling load, or pass trust_code=True")
        model_fn = recorded_factory(config, directory, teacher=entry.get("role") == "teacher")
    model = build_model(model_fn, "model_fn")
    with saved_weights_of(name):
        model.load_state_dict(state["model"])
    return model.eval()


def recorded_factory(config: ExperimentConfig, directory: SeedDirectory, teacher: bool) -> ModelFn:
    """The factory of a run's students (or of its teacher, when it has another architecture), from its records."""
    if config.data.dataset == PYTHON:
        raise RunError(
            f"{directory.root} was made from Python with its own model; pass it: load(..., model_fn=lambda: MyNet())"
        )
    options = directory.model_options()
    import_modules(config.imports)
    if teacher and config.model.teacher_name:
        return model_factory(config.model.teacher_name, config.model.teacher_options, options)
    return model_factory(config.model.name, config.model.options, options)
