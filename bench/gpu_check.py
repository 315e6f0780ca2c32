"""One command that checks banets on a GPU and measures it: run it once on a new machine or PyTorch build.

Five parts, each reporting pass or FAIL per row (the script exits 1 if any row failed), then the report:

1. steps: one engine step of every registered vision model (not the language models) in bf16 and in fp16 (with
   loss scaling), channels_last, on random images: the loss must be finite.
2. speed: images/s of the bare step, the engine step, the distillation step (frozen teacher + BAN loss) and the
   teacher's forward for resnet20, wrn_28_10 and densenet_bc_90_60 at batch 128, eager and under torch.compile,
   measured side by side in this process (``bench_speed.measure``); tokens/s of lstm_lm_large's engine and
   distillation steps on Zaremba batches of 20 x 35 random tokens.
3. losses: every registered loss's value and gradient on the GPU against the CPU, on the same logits.
4. end to end: ``banets run table1_wrn_28_10`` for two epochs on random CIFAR-10 files written in the official
   pickle layout, killed (SIGKILL) right after its first epoch's checkpoint, then ``banets resume``; reports each
   epoch's wall-clock time from the run's ``metrics.jsonl``.
5. CUDA paths: what only a GPU shows of the defects issue 16 fixed. ``precision: auto`` against PyTorch's own
   "native bf16" answer; the LSTM in float32 under bf16 autocast (cuDNN's autocast wrapper would make it fp16);
   no host-device sync (``torch.cuda.set_sync_debug_mode("error")``) in the normalisation, DKPP's permutation, the
   CNN-LSTM's word features and a teacher-cache replay; the cache's stored dtype under autocast and its memory
   budget. (The order of torch.compile and DistributedDataParallel needs several GPUs: tests/test_engine.py.)

The report: one Markdown table on stdout, and ``gpu_check.md`` and ``gpu_check.json`` in ``--out``.

``--smoke`` runs every part on the CPU at tiny sizes (two small models, batches of a few images, a trivial compile
that traces with Dynamo but generates no code, a WRN-10-1 in the end-to-end run), so that the test suite can run
the script and it cannot rot; its numbers mean nothing.

Run: python bench/gpu_check.py --out OUT [--parts 1,3,5]    (one CUDA GPU; aimed at under 5 minutes)
     OMP_NUM_THREADS=1 python bench/gpu_check.py --smoke --out OUT
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import math
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from bench_speed import measure, timed

from banets import losses
from banets.data.augment import cifar_transform
from banets.data.fake_cifar import TRAIN_BATCHES, write_fake_cifar10
from banets.data.text import BpttBatches
from banets.engine import TrainConfig, Trainer, device_precision
from banets.models import create_model, list_models
from banets.models.registry import model_parameters
from banets.runs import SeedDirectory
from banets.teacher import FrozenTeacher
from banets.teacher_cache import CachedTeacher, free_memory

KILL_AFTER_FIRST_EPOCH = r"""
import os, signal, sys
import banets.runs
from banets.cli import main

save = banets.runs.SeedDirectory.on_epoch_end

def on_epoch_end(self, *args):
    save(self, *args)
    os.kill(os.getpid(), signal.SIGKILL)  # between epochs: the first epoch's checkpoint is written

banets.runs.SeedDirectory.on_epoch_end = on_epoch_end
sys.exit(main(sys.argv[1:]))
"""


@dataclass
class Row:
    """One line of the report: which part, what was checked, whether it passed, and what was measured."""

    part: str
    check: str
    ok: bool
    result: str
    numbers: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Sizes:
    """How big each part runs: the GPU check, or the CPU smoke test."""

    device: str
    step_models: tuple[str, ...]  # part 1; empty: every registered vision model
    step_batch: int
    speed_models: tuple[str, ...]  # part 2
    speed_batch: int
    speed_steps: int
    speed_rounds: int
    lm_model: str
    lm_options: dict
    lm_vocab: int
    lm_batch: int
    lm_bptt: int
    loss_rows: int  # part 3
    loss_classes: int
    cifar_per_batch: int  # part 4: images per training batch file (the official files hold 10,000)
    cifar_test: int
    cifar_val: int  # carved from the training images (the preset's 5,000)
    run_overrides: tuple[str, ...]


GPU = Sizes(device="cuda", step_models=(), step_batch=32, speed_models=("resnet20", "wrn_28_10", "densenet_bc_90_60"),
            speed_batch=128, speed_steps=10, speed_rounds=3, lm_model="lstm_lm_large", lm_options={}, lm_vocab=10_000,
            lm_batch=20, lm_bptt=35, loss_rows=20 * 35, loss_classes=10_000, cifar_per_batch=10_000, cifar_test=10_000,
            cifar_val=5_000, run_overrides=())
SMOKE = Sizes(device="cpu", step_models=("resnet8", "small_cnn"), step_batch=4, speed_models=("resnet8",), speed_batch=8,
              speed_steps=1, speed_rounds=1, lm_model="lstm_lm",
              lm_options={"embed_dim": 16, "hidden_dim": 16, "num_layers": 1, "dropout": 0.0}, lm_vocab=50, lm_batch=2,
              lm_bptt=5, loss_rows=16, loss_classes=10, cifar_per_batch=8, cifar_test=10, cifar_val=8,
              run_overrides=("data.batch_size=8", "model.options={depth: 10, widen_factor: 1, dropout: 0.3}"))  # WRN-10-1


def guarded(part: str, check: str, produce: Callable[[], list[Row]]) -> list[Row]:
    """``produce()``'s rows, or one failed row with the error: one broken model must not hide the others' results."""
    try:
        return produce()
    except Exception as error:  # any failure is a result to report, not a reason to stop
        message = " ".join(f"{type(error).__name__}: {error}".split())
        return [Row(part, check, False, message[:160])]


# -- part 1: one training step of every vision model ---------------------------------------------------------


def vision_models() -> list[str]:
    """The registered models that classify images: all but the language models, which take words or a vocabulary."""
    return [name for name in list_models() if not {"words", "vocab_size"} & model_parameters(name)]


def cifar_options(name: str) -> dict:
    """The options that make model ``name`` take CIFAR images (3 x 32 x 32, 10 classes)."""
    options = {"in_channels": 3, "in_features": 3 * 32 * 32, "num_classes": 10}
    return {key: value for key, value in options.items() if key in model_parameters(name)}


def check_training_steps(sizes: Sizes) -> list[Row]:
    """Part 1: one engine step per vision model and precision (bf16; fp16 with loss scaling), channels_last."""
    rows = []
    for name in sizes.step_models or vision_models():
        for precision in ("bf16", "fp16"):
            rows += guarded("1 steps", f"{name} {precision}", functools.partial(one_step, name, precision, sizes))
    return rows


def one_step(name: str, precision: str, sizes: Sizes) -> list[Row]:
    torch.manual_seed(0)
    config = TrainConfig(precision=precision, channels_last=True, progress="none")
    with torch.device(sizes.device):  # initialised where it trains: seconds saved on the 200M-parameter models
        model = create_model(name, **cifar_options(name))
    trainer = Trainer(model, losses.get("ce"), config, seed=0, device=torch.device(sizes.device))
    images = torch.rand(sizes.step_batch, 3, 32, 32)
    labels = torch.randint(0, 10, (sizes.step_batch,))
    loss = trainer.train_epoch([(images, labels)])["train_loss"]
    finite = trainer.nonfinite_run.item() == 0  # fp16 skips a NaN/inf loss (and leaves it out of train_loss)
    scale = f", loss scale {trainer.scaler.get_scale():g}" if trainer.scaler.is_enabled() else ""
    result = f"loss {loss:.3f}{scale}" if finite else "loss NaN/inf"
    return [Row("1 steps", f"{name} {precision}", finite and math.isfinite(loss), result, {"loss": loss})]


# -- part 2: speed -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def trivial_compile() -> Iterator[None]:
    """``torch.compile`` with Dynamo's ``eager`` backend: it traces the model as a real compile does but generates
    no code, so the compiled path runs in seconds on a CPU (``--smoke``)."""
    compile_ = torch.compile
    torch.compile = functools.partial(compile_, backend="eager")
    try:
        yield
    finally:
        torch.compile = compile_


def check_speed(sizes: Sizes) -> list[Row]:
    """Part 2: images/s of each vision model's steps, eager and compiled, then tokens/s of the language model."""
    rows = []
    for name in sizes.speed_models:
        for compiled in (False, True):
            mode = "compiled" if compiled else "eager"
            rows += guarded("2 speed", f"{name} {mode}", functools.partial(image_rates, name, compiled, sizes))
    return rows + guarded("2 speed", sizes.lm_model, functools.partial(token_rates, sizes))


def image_rates(name: str, compiled: bool, sizes: Sizes) -> list[Row]:
    config = TrainConfig(progress="none", channels_last=True, compile=compiled)
    rates = measure(name, torch.device(sizes.device), sizes.speed_batch, sizes.speed_steps, sizes.speed_rounds, config,
                    wall=True)
    mode = "compiled" if compiled else "eager"
    return [Row("2 speed", f"{name} {mode} {kind}", rate > 0 and math.isfinite(rate), f"{rate:,.0f} img/s",
                {"images_per_s": rate}) for kind, rate in rates.items()]


def token_rates(sizes: Sizes) -> list[Row]:
    """Tokens/s of the language model's engine step and distillation step (BAN from a frozen copy), fastest round."""
    device = torch.device(sizes.device)
    steps = sizes.speed_steps
    tokens = torch.randint(sizes.lm_vocab, (sizes.lm_batch * (steps * sizes.lm_bptt + 1),),
                           generator=torch.Generator().manual_seed(0))
    batches = BpttBatches(tokens, sizes.lm_batch, sizes.lm_bptt)
    config = TrainConfig(progress="none", lr=1.0, momentum=0.0, weight_decay=0.0, grad_clip=0.25, schedule="constant")
    torch.manual_seed(0)
    model = functools.partial(create_model, sizes.lm_model, vocab_size=sizes.lm_vocab, **sizes.lm_options)
    trainers = {"engine": Trainer(model(), losses.get("ce"), config, seed=0, device=device),
                "distill": Trainer(model(), losses.get("ban"), config, seed=0, device=device,
                                   teacher=FrozenTeacher(model()))}
    rows = []
    for kind, trainer in trainers.items():
        epoch = functools.partial(trainer.train_epoch, batches)
        epoch()  # warm-up
        seconds = min(timed(epoch, device, wall=True) for _ in range(sizes.speed_rounds))
        rate = len(batches) * sizes.lm_batch * sizes.lm_bptt / seconds
        rows.append(Row("2 speed", f"{sizes.lm_model} {kind}", rate > 0 and math.isfinite(rate), f"{rate:,.0f} tokens/s",
                        {"tokens_per_s": rate}))
    return rows


# -- part 3: losses on the device against the CPU -----------------------------------------------------------


def check_losses(sizes: Sizes) -> list[Row]:
    """Part 3: each registered loss's value and gradient on the device against the CPU, on the same float32 logits."""
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(sizes.loss_rows, sizes.loss_classes, generator=generator) * 3
    teacher = torch.randn(sizes.loss_rows, sizes.loss_classes, generator=generator) * 3
    labels = torch.randint(sizes.loss_classes, (sizes.loss_rows,), generator=generator)
    rows = []
    for name in losses.names():
        rows += guarded("3 losses", name, functools.partial(compare_loss, name, student, teacher, labels, sizes.device))
    return rows


def compare_loss(name: str, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, device: str) -> list[Row]:
    (value, grad), (reference, reference_grad) = (loss_and_grad(name, student, teacher, labels, d) for d in (device, "cpu"))
    value_error = abs(value - reference) / max(abs(reference), 1e-12)
    grad_error = ((grad - reference_grad).abs().max() / reference_grad.abs().max().clamp_min(1e-12)).item()
    ok = value_error < 1e-5 and grad_error < 1e-4
    return [Row("3 losses", name, ok, f"value {value:.6f}, relative error {value_error:.1e} (value), {grad_error:.1e} (gradient)",
                {"value": value, "value_error": value_error, "grad_error": grad_error})]


def loss_and_grad(name: str, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                  device: str) -> tuple[float, torch.Tensor]:
    """Loss ``name``'s value and gradient with respect to the student logits on ``device``; a loss that draws at
    random (DKPP's permutation) draws from the same seeded CPU generator on every device."""
    takes_generator = "generator" in inspect.signature(losses.get(name)).parameters
    loss = losses.get(name, **({"generator": torch.Generator().manual_seed(1)} if takes_generator else {}))
    logits = student.to(device).requires_grad_(True)
    value = losses.total(loss(logits, teacher.to(device), labels.to(device)))
    (grad,) = torch.autograd.grad(value, logits)
    return value.item(), grad.cpu()


# -- part 4: a preset end to end through the command line ---------------------------------------------------


def check_end_to_end(sizes: Sizes, workdir: Path) -> list[Row]:
    """Part 4: ``banets run table1_wrn_28_10`` (two epochs per model) on fake CIFAR-10 files, killed after the first
    epoch's checkpoint, then ``banets resume``: both must do what they should, and each epoch's time is reported."""
    write_fake_cifar10(workdir / "data", per_batch=sizes.cifar_per_batch, test=sizes.cifar_test)
    out = workdir / "run"
    overrides = ["optim.epochs=2", "optim.progress=none", f"device={sizes.device}", f"data.val_size={sizes.cifar_val}",
                 *sizes.run_overrides]
    run = ["run", "table1_wrn_28_10", "--seeds", "0", "--data-dir", str(workdir / "data"), "--out", str(out),
           *(arg for override in overrides for arg in ("--set", override))]
    killed, killed_seconds = banets_command(["-c", KILL_AFTER_FIRST_EPOCH, *run])
    resumed, resumed_seconds = banets_command(["-m", "banets", "resume", str(out)])
    rows = [Row("4 end to end", "run, killed after epoch 1", killed.returncode == -signal.SIGKILL,
                f"exit {killed.returncode} after {killed_seconds:.1f} s{tail(killed)}", {"seconds": killed_seconds}),
            Row("4 end to end", "resume", resumed.returncode == 0, f"exit {resumed.returncode} after {resumed_seconds:.1f} s"
                f"{tail(resumed)}", {"seconds": resumed_seconds})]
    return rows + guarded("4 end to end", "run directory", functools.partial(epoch_rows, out / "seed-0", sizes))


def banets_command(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``python ARGS`` (banets' command line, or a wrapper of it); its result and its wall-clock seconds."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    return result, time.perf_counter() - start


def tail(result: subprocess.CompletedProcess) -> str:
    """The last line of a failed command's stderr, for the report; nothing for a command that did what it should."""
    lines = result.stderr.strip().splitlines()
    return f": {lines[-1][:120]}" if lines and result.returncode not in (0, -signal.SIGKILL) else ""


def epoch_rows(seed_dir: Path, sizes: Sizes) -> list[Row]:
    """One row per model and epoch from the run directory: every model finished, with its wall-clock epoch time."""
    directory = SeedDirectory(seed_dir)
    models = directory.manifest["models"]
    rows = [Row("4 end to end", "models finished", all(m["status"] == "done" for m in models.values()),
                ", ".join(f"{name}: {m['status']}" for name, m in models.items()))]
    lines = [json.loads(line) for line in (seed_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [(line["model"], line["epoch"]) for line in lines]
    rows.append(Row("4 end to end", "resume continued at epoch 2", len(set(epochs)) == len(epochs),
                    "no epoch trained twice" if len(set(epochs)) == len(epochs) else f"epochs trained: {epochs}"))
    train_images = TRAIN_BATCHES * sizes.cifar_per_batch - sizes.cifar_val
    for record in directory.epochs():
        seconds = record["seconds"]
        rows.append(Row("4 end to end", f"{record['model']} epoch {record['epoch']}", math.isfinite(record["train_loss"]),
                        f"{seconds:.1f} s with validation, {train_images / seconds:,.0f} training img/s",
                        {"seconds": seconds, "train_images": train_images}))
    return rows


# -- part 5: the CUDA-only paths of issue 16 ---------------------------------------------------------------


def check_cuda_paths(sizes: Sizes) -> list[Row]:
    """Part 5: precision auto, the LSTM's dtype under autocast, no host sync in four per-step paths, the teacher
    cache's dtype and budget. On a CPU (``--smoke``) the same code runs, with nothing to synchronise."""
    checks: dict[str, Callable[[torch.device], tuple[bool, str]]] = {
        "precision auto": auto_precision_row,
        "LSTM in float32 under bf16 autocast": lstm_dtype_row,
        "no host sync: normalisation": lambda device: sync_free_row(device, *normalised_batch(device)),
        "no host sync: DKPP permutation": lambda device: sync_free_row(device, *dkpp_step(device)),
        "no host sync: CNN-LSTM word features": lambda device: sync_free_row(device, *word_features(device)),
        "no host sync: teacher-cache replay": lambda device: sync_free_row(device, *cache_replay(device)),
        "teacher cache under bf16 autocast": cache_dtype_row,
        "teacher cache budget": cache_budget_row,
    }
    rows = []
    for check, make in checks.items():
        rows += guarded("5 cuda paths", check, functools.partial(path_row, check, make, torch.device(sizes.device)))
    return rows


def path_row(check: str, make: Callable[[torch.device], tuple[bool, str]], device: torch.device) -> list[Row]:
    return [Row("5 cuda paths", check, *make(device))]


Step = tuple[Callable[[], object], Callable[[], object]]  # (what to run first, allowed to sync; what must not sync)


def auto_precision_row(device: torch.device) -> tuple[bool, str]:
    """``auto`` is bf16 exactly where PyTorch says bf16 is native (not emulated), and fp32 off CUDA."""
    chosen = device_precision("auto", device)
    if device.type != "cuda":
        return chosen == "fp32", f"{chosen} on {device.type}"
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    return (chosen == "bf16") == native, f"{chosen}; torch.cuda.is_bf16_supported(including_emulation=False) is {native}"


def lstm_dtype_row(device: torch.device) -> tuple[bool, str]:
    model = create_model("lstm_lm", vocab_size=50, embed_dim=16, hidden_dim=16, num_layers=2, dropout=0.0).to(device)
    seen = []
    model.lstm.register_forward_hook(lambda module, inputs, output: seen.append(output[0].dtype))
    with torch.autocast(device.type, dtype=torch.bfloat16):
        logits = model(torch.randint(50, (2, 5), device=device))
    return seen == [torch.float32] and logits.dtype == torch.bfloat16, f"LSTM {seen[0]}, decoder {logits.dtype}"


def sync_free_row(device: torch.device, before: Callable[[], object], step: Callable[[], object]) -> tuple[bool, str]:
    """Run ``before`` and ``step`` twice (the first time warms up), the second ``step`` with CUDA's sync debug mode
    raising on any host-device synchronisation."""
    before()
    step()
    before()
    if device.type != "cuda":
        step()
        return True, "ran (a CPU has no device to wait for)"
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)
    return True, "no sync"


def nothing() -> None:
    """No preparation."""


def normalised_batch(device: torch.device) -> Step:
    transform, generator = cifar_transform("cifar10", normalize=True), torch.Generator(device).manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, device=device)
    return nothing, lambda: transform(images, generator, True)


def dkpp_step(device: torch.device) -> Step:
    student = torch.randn(64, 100, device=device, requires_grad=True)
    teacher, labels = torch.randn(64, 100, device=device), torch.randint(100, (64,), device=device)
    return nothing, lambda: losses.dkpp(student, teacher, labels).backward()


def word_features(device: torch.device) -> Step:
    words = ["<unk>", "<eos>", *(f"w{i}" for i in range(48))]
    model = create_model("cnn_lstm", words=words, widths=(1, 2), filters=(4, 4), highway_layers=1, hidden_dim=8).to(device)
    tokens = torch.randint(len(words), (4, 6), device=device)
    return nothing, lambda: model.word_features(tokens)


def cache_replay(device: torch.device) -> Step:
    """A filled cache's replay of a pass: its first batch (compared element for element: the one sync a pass may
    have) before, the others in the step."""
    batches = [torch.randint(50, (4, 6), device=device) for _ in range(3)]
    cache = CachedTeacher(torch.nn.Embedding(50, 50).to(device), len(batches), "auto", max_bytes=10**9)
    for x in batches:
        cache(x)

    def first_batch() -> None:
        cache.reset_state()
        cache(batches[0])

    return first_batch, lambda: [cache(x) for x in batches[1:]]


def cache_dtype_row(device: torch.device) -> tuple[bool, str]:
    cache = CachedTeacher(torch.nn.Linear(8, 10).to(device), 1, "fp32", max_bytes=10**9)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        cache(torch.randn(4, 8, device=device))
    stored = cache.logits[0].dtype
    return stored == torch.bfloat16, f"cache_teacher fp32 stores {stored}"


def cache_budget_row(device: torch.device) -> tuple[bool, str]:
    """Memory PyTorch keeps reserved after freeing a tensor counts as free for the cache's budget."""
    if device.type != "cuda":
        return free_memory(device) > 0, f"{free_memory(device) / 1e9:.1f} GB available on the host"
    block = torch.empty(2**28, dtype=torch.uint8, device=device)  # 256 MiB, then freed: reserved, unused
    del block
    driver_free = torch.cuda.mem_get_info(device)[0]
    counted = free_memory(device)
    return counted >= driver_free + 2**28, f"{counted / 1e9:.2f} GB counted free, the driver says {driver_free / 1e9:.2f} GB"


# -- the report ----------------------------------------------------------------------------------------------


def environment(sizes: Sizes) -> dict:
    device = torch.device(sizes.device)
    info = {"torch": torch.__version__, "device": sizes.device, "precision_auto": device_precision("auto", device)}
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), capability=".".join(map(str, torch.cuda.get_device_capability(device))),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    else:
        info.update(threads=torch.get_num_threads())
    return info


def markdown(rows: list[Row], env: dict) -> str:
    header = ", ".join(f"{key} {value}" for key, value in env.items())
    lines = [f"GPU check: {header}", "", "| part | check | | result |", "|---|---|---|---|"]
    lines += [f"| {row.part} | {row.check} | {'pass' if row.ok else 'FAIL'} | {row.result} |" for row in rows]
    failed = sum(not row.ok for row in rows)
    return "\n".join(lines + ["", f"{len(rows) - failed} passed, {failed} failed"])


def write_report(rows: list[Row], env: dict, out: Path) -> str:
    table = markdown(rows, env)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.md").write_text(table + "\n")
    (out / "gpu_check.json").write_text(json.dumps({"environment": env, "rows": [asdict(row) for row in rows]}, indent=1))
    return table


PARTS: dict[str, Callable[[Sizes, Path], list[Row]]] = {
    "1": lambda sizes, workdir: check_training_steps(sizes),
    "2": lambda sizes, workdir: check_speed(sizes),
    "3": lambda sizes, workdir: check_losses(sizes),
    "4": check_end_to_end,
    "5": lambda sizes, workdir: check_cuda_paths(sizes),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.md and gpu_check.json")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: checks the script, measures nothing")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts to run, e.g. 1,3")
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    if not set(parts) <= set(PARTS):
        parser.error(f"--parts takes some of {','.join(PARTS)}, not {args.parts}")
    sizes = SMOKE if args.smoke else GPU
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine, or with --smoke for the CPU self-test", file=sys.stderr)
        return 2
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as workdir, trivial_compile() if args.smoke else contextlib.nullcontext():
        for part in parts:
            rows += PARTS[part](sizes, Path(workdir))
    print(write_report(rows, environment(sizes), Path(args.out)))
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
