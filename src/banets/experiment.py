"""From a configuration to a finished run: data, model factories and loss handed to the driver, one run
directory per seed. This is what ``banets run`` and ``banets resume`` call, also under torchrun, where every
process trains and evaluates and rank 0 alone writes the run directory."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from banets import distributed
from banets.config import DataConfig, ExperimentConfig, ModelConfig, load_config, to_dict
from banets.data.augment import cifar_transform, pad_crop_flip
from banets.data.digits import load_digits_splits
from banets.data.tensors import TensorBatches
from banets.engine import Batch, DivergedError, Transform, resolve_device
from banets.ensemble import evaluate_with_ensembles
from banets.generations import BornAgainResult, ReadOnlyStore, born_again
from banets.models.registry import create_model, model_parameters
from banets.runs import RunDirectory, RunError

TRAIN_EVAL_ROWS = 10_000  # training examples evaluated at the end, for the training error (does the teacher fit?)


@dataclass
class Data:
    """Everything the driver needs from a dataset; ``model_options`` are derived from it (e.g. num_classes)."""

    train: Iterable[Batch]
    val: Iterable[Batch]
    test: Iterable[Batch]
    train_eval: Optional[Iterable[Batch]] = None
    transform: Optional[Transform] = None
    model_options: dict = field(default_factory=dict)


def digits_data(cfg: DataConfig, run_dir: Path, channels_last: bool) -> Data:
    splits = load_digits_splits(val_size=cfg.val_size, split_seed=cfg.split_seed)

    def shift(x, generator, train):  # digits must not be mirrored: a one-pixel random shift only
        return pad_crop_flip(x, 1, generator, flip=False) if train and cfg.augment else x

    return Data(
        train=TensorBatches(*splits.train, batch_size=cfg.batch_size, shuffle=True),
        val=TensorBatches(*splits.val, batch_size=cfg.eval_batch_size),
        test=TensorBatches(*splits.test, batch_size=cfg.eval_batch_size),
        train_eval=TensorBatches(*splits.train, batch_size=cfg.eval_batch_size),
        transform=shift,
        model_options={"num_classes": splits.num_classes},
    )


def cifar_data(cfg: DataConfig, run_dir: Path, channels_last: bool) -> Data:
    from banets.data.cifar import load_cifar, train_val_split

    if cfg.path is None and not cfg.download:
        raise RunError(f"{cfg.dataset}: no data path; pass --data-dir PATH (a cifar folder or archive) or --set data.download=true")
    data = load_cifar(cfg.dataset, cfg.path or Path.home() / ".cache" / "banets", download=cfg.download)
    train_idx, val_idx = train_val_split(len(data.train_y), cfg.val_size, cfg.split_seed, cfg.train_subset)
    x, y = data.train_x, data.train_y
    return Data(
        train=TensorBatches(x[train_idx], y[train_idx], batch_size=cfg.batch_size, shuffle=True, drop_last=True),
        val=TensorBatches(x[val_idx], y[val_idx], batch_size=cfg.eval_batch_size),
        test=TensorBatches(data.test_x, data.test_y, batch_size=cfg.eval_batch_size),
        train_eval=TensorBatches(x[train_idx[:TRAIN_EVAL_ROWS]], y[train_idx[:TRAIN_EVAL_ROWS]], batch_size=cfg.eval_batch_size),
        transform=cifar_transform(cfg.dataset, augment=cfg.augment, normalize=cfg.normalize, channels_last=channels_last),
        model_options={"num_classes": data.num_classes},
    )


def text_data(cfg: DataConfig, run_dir: Path, channels_last: bool) -> Data:
    from banets.data.text import BpttBatches, Vocabulary, load_corpus

    if cfg.path is None and not cfg.download:
        raise RunError("text: no corpus folder; pass --data-dir PATH (a folder with *.train.txt, *.valid.txt, *.test.txt)")
    vocab_file = run_dir / "vocab.json"
    vocab = Vocabulary.load(vocab_file) if vocab_file.exists() else None
    corpus = load_corpus(cfg.path or Path.home() / ".cache" / "banets" / "ptb", max_vocab=cfg.max_vocab,
                         tokenizer=cfg.tokenizer, vocab=vocab, download=cfg.download)
    if vocab is None:
        corpus.vocab.save(vocab_file)
    return Data(
        train=BpttBatches(corpus.train, cfg.batch_size, cfg.bptt),
        val=BpttBatches(corpus.valid, cfg.eval_batch_size, cfg.bptt),
        test=BpttBatches(corpus.test, cfg.eval_batch_size, cfg.bptt),
        model_options={"vocab_size": len(corpus.vocab), "words": corpus.vocab.words},
    )


DATASETS: dict[str, Callable[[DataConfig, Path, bool], Data]] = {
    "digits": digits_data,
    "cifar10": cifar_data,
    "cifar100": cifar_data,
    "text": text_data,
}


def prepare_data(cfg: DataConfig, run_dir: Path, channels_last: bool = False) -> Data:
    if cfg.dataset not in DATASETS:
        raise RunError(f"unknown dataset {cfg.dataset!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[cfg.dataset](cfg, run_dir, channels_last)


def model_factory(name: str, options: dict, data_options: dict) -> Callable:
    """A factory for model ``name``: the config's options plus those derived from the data that it takes."""
    accepted = model_parameters(name)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise RunError(f"model {name!r} takes no option {', '.join(unknown)}; it takes {', '.join(sorted(accepted))}")
    derived = {k: v for k, v in data_options.items() if k in accepted and k not in options}
    return lambda: create_model(name, **derived, **options)


def teacher_factory(cfg: ModelConfig, data_options: dict) -> Optional[Callable]:
    """A factory for a teacher of another architecture, checked to predict the students' classes from the same inputs."""
    if not cfg.teacher_name:
        return None
    for key in ("num_classes", "in_channels"):
        ours, theirs = (options.get(key, data_options.get(key)) if key in model_parameters(name) else None
                        for name, options in ((cfg.name, cfg.options), (cfg.teacher_name, cfg.teacher_options)))
        if None not in (ours, theirs) and ours != theirs:
            raise RunError(f"teacher {cfg.teacher_name} has {key}={theirs} but the students ({cfg.name}) have {key}={ours}; "
                           f"teacher and students must share classes and inputs")
    return model_factory(cfg.teacher_name, cfg.teacher_options, data_options)


def run_seed(config: ExperimentConfig, seed: int, run_dir: Path, resume: bool = False) -> BornAgainResult:
    """Train and evaluate one seed's plan into ``run_dir``; a resumed run skips what is already done.

    Under torchrun every process runs this; rank 0 alone creates and writes ``run_dir``, the others read
    from it the checkpoints to resume from.
    """
    distributed.init_from_env(resolve_device(config.device))
    main = distributed.is_main()
    if config.data.batch_size % distributed.world_size():
        raise RunError(f"data.batch_size={config.data.batch_size} is the global batch and must split evenly over "
                       f"{distributed.world_size()} processes; set a multiple of {distributed.world_size()}")
    with distributed.main_first():  # rank 0 creates or checks the directory (and any vocabulary), then the others read
        run = RunDirectory(run_dir)
        if main:
            run.start(to_dict(replace(config, seeds=[seed])), resume=resume)
        data = prepare_data(config.data, run_dir, config.optim.channels_last)
    ban = config.ban
    try:
        result = born_again(
            model_factory(config.model.name, config.model.options, data.model_options),
            data.train, data.val, data.test,
            generations=ban.generations, loss=ban.loss, loss_options=ban.loss_options, extra_losses=ban.extra_losses,
            controls=ban.controls, teacher_fn=teacher_factory(config.model, data.model_options), share_layers=ban.share_layers,
            init_from_teacher=ban.init_from_teacher, ensemble_teacher=ban.ensemble_teacher, ensembles=ban.ensembles,
            seed=seed, config=config.optim, device=config.device, transform=data.transform,
            store=run if main else ReadOnlyStore(run),
            cache_teacher=ban.cache_teacher,
        )
    except DivergedError as error:
        if main:
            run.mark_failed(error.model, str(error))
        raise
    if data.train_eval is not None:
        result.predictions["train"] = evaluate_with_ensembles(
            result.models, result.ensembles, data.train_eval, resolve_device(config.device), config.optim, data.transform)
    if main:
        for split, predictions in result.predictions.items():
            run.save_predictions(split, predictions)
        run.save_results({split: result.rows(split) for split in result.predictions})
        run.record_ensembles(config.ban.ensembles)
    return result


def run_experiment(config: ExperimentConfig, out: Path, resume: bool = False) -> dict[int, BornAgainResult]:
    """Run every seed of ``config``, each into ``out/seed-<seed>``."""
    return {seed: run_seed(config, seed, Path(out) / f"seed-{seed}", resume) for seed in config.seeds}


def seed_dirs(out: Path) -> list[Path]:
    dirs = sorted(p for p in Path(out).glob("seed-*") if (p / "config.yaml").exists())
    if not dirs:
        raise RunError(f"{out} holds no run (no seed-*/config.yaml); start one with `banets run PRESET --out {out}`")
    return dirs


def resume_experiment(out: Path, overrides: Sequence[str] = ()) -> dict[int, BornAgainResult]:
    """Continue every seed of the run in ``out`` with the config it was started with; ``overrides`` may change
    runtime keys (device, progress, data path) and the ensembles only, anything else is refused by the run directory."""
    results = {}
    for seed_dir in seed_dirs(out):
        config = load_config(str(seed_dir / "config.yaml"), overrides)
        (seed,) = config.seeds
        results[seed] = run_seed(config, seed, seed_dir, resume=True)
    return results
