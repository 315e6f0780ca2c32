"""The Python API on your own model, data and losses: every refusal before the first epoch, open losses, run
directories made from Python (report, resume, load), and the defaults."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import banets
from banets import BornAgainConfig, TrainConfig, born_again, create_model, losses
from banets.config import UserError
from banets.engine import Trainer
from banets.runs import SeedDirectory

pytestmark = pytest.mark.usefixtures("one_thread")
ONE_EPOCH = TrainConfig(epochs=1, progress="none")


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 8, generator=gen)
    y = torch.randint(0, 4, (96,), generator=gen)
    return (x[:64], y[:64]), (x[64:], y[64:])


@pytest.fixture
def model_fn():
    return lambda: create_model("mlp", in_features=8, num_classes=4, hidden=(8,))


@pytest.fixture
def trainings(monkeypatch):
    """The names of the models whose training started."""
    started = []
    fit = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self, *a: started.append(self.name) or fit(self, *a))
    return started


def refusals(model_fn, data):
    train, val = data
    x, y = train
    three_classes = lambda: create_model("mlp", in_features=8, num_classes=3, hidden=(8,))  # noqa: E731
    nine_inputs = lambda: create_model("mlp", in_features=9, num_classes=4)  # noqa: E731
    one_model = model_fn()
    shared_layer = torch.nn.Linear(8, 4)
    return {
        "factory returning one model": (lambda: born_again(lambda: one_model, train, val, optim=ONE_EPOCH),
                                        "the model factory returns the same model (or layers) at every call"),
        "factory sharing a layer": (lambda: born_again(lambda: torch.nn.Sequential(shared_layer), train, val, optim=ONE_EPOCH),
                                    "returns the same model (or layers) at every call; build a new one inside it"),
        "loss returning a vector": (lambda: born_again(model_fn, train, val, optim=ONE_EPOCH,
                                                       ban=BornAgainConfig(loss=lambda s, t, y: F.cross_entropy(s, y, reduction="none"))),
                                    "returned (64,), not one number; return a scalar tensor"),
        "loss returning a float": (lambda: born_again(model_fn, train, val, optim=ONE_EPOCH,
                                                      ban=BornAgainConfig(loss=lambda s, t, y: float(F.cross_entropy(s, y)))),
                                   "returned float, not one number"),
        "loss detached": (lambda: born_again(model_fn, train, val, optim=ONE_EPOCH,
                                             ban=BornAgainConfig(loss=lambda s, t, y: F.cross_entropy(s, y).detach())),
                          "returned a value without a gradient to the student's logits"),
        "a transform of one argument": (lambda: born_again(model_fn, train, val, optim=ONE_EPOCH, transform=lambda x: x * 2),
                                        "it is called as transform(x, generator, train)"),
        "NaN in the inputs": (lambda: born_again(model_fn, (torch.where(torch.arange(64)[:, None] == 40, float("nan"), x), y), val,
                                                 optim=ONE_EPOCH), "the training inputs hold NaN or inf"),
        "a validation label beyond the classes": (lambda: born_again(model_fn, train, (val[0], val[1] + 4), optim=ONE_EPOCH),
                                                  "the model, on the validation data, has 4 outputs but the labels range over"),
        "test inputs of another shape": (lambda: born_again(model_fn, train, val, (val[0][:, :5], val[1]), optim=ONE_EPOCH),
                                         "the model, on the test data, fails on a batch of shape (32, 5)"),
        "cache on shuffled data": (lambda: born_again(model_fn, train, val, optim=ONE_EPOCH, ban=BornAgainConfig(cache_teacher="fp32")),
                                   "ban.cache_teacher replays the teacher's outputs of the first epoch, but these training batches"),
        "seeds as a float": (lambda: born_again(model_fn, train, val, optim=ONE_EPOCH, seeds=1.5), "seeds expects a list, got 1.5"),
        "an array of Python objects": (lambda: born_again(model_fn, (np.array([[1.0], "a"] * 32, dtype=object), y.numpy()), val,
                                                          optim=ONE_EPOCH), "an array of dtype object"),
        "fewer labels than rows": (lambda: born_again(model_fn, (x, y[:50]), val, optim=ONE_EPOCH),
                                   "train: x has 64 rows but y has 50; give one label per example"),
        "model instance": (lambda: born_again(model_fn(), train, val, optim=ONE_EPOCH),
                           "model_fn is a model instance; pass a factory that builds a fresh one, e.g. lambda: MLP(...)"),
        "factory returns None": (lambda: born_again(lambda: None, train, val, optim=ONE_EPOCH),
                                 "model_fn returned NoneType, not an nn.Module"),
        "dict batch of unknown keys": (lambda: born_again(model_fn, [{"a": x, "b": y}], val, optim=ONE_EPOCH),
                                       "a dict batch needs its labels under labels/label/y/target/targets; this "
                                       "one has a, b (name it with label_key=)"),
        "a string as data": (lambda: born_again(model_fn, "train.csv", val, optim=ONE_EPOCH), "train is a str; pass an (x, y) pair"),
        "float labels": (lambda: born_again(model_fn, (x, y.float()), val, optim=ONE_EPOCH),
                         "the training labels are torch.float32; class labels must be integers"),
        "no validation data": (lambda: born_again(model_fn, train, None, optim=ONE_EPOCH), "no validation data"),
        "loss typo": (lambda: born_again(model_fn, train, val, ban=BornAgainConfig(loss="bann"), optim=ONE_EPOCH),
                      "unknown loss 'bann'; did you mean 'ban'?"),
        "extra loss typo": (lambda: born_again(model_fn, train, val, ban=BornAgainConfig(extra_losses=["cwtmm"]), optim=ONE_EPOCH),
                            "unknown loss 'cwtmm'; did you mean 'cwtm'?"),
        "loss option typo": (lambda: born_again(model_fn, train, val, optim=ONE_EPOCH,
                                                ban=BornAgainConfig(loss="ban+l", loss_options={"weight": 1})),
                             "the options label_weight, normalize, temperature, anneal: got an unexpected keyword argument 'weight'"),
        "fewer outputs than classes": (lambda: born_again(three_classes, train, val, optim=ONE_EPOCH),
                                       "the model has 3 outputs but the labels range over [0, 3]; build it with at least 4"),
        "teacher of other classes": (lambda: born_again(model_fn, train, val, teacher_fn=three_classes, optim=ONE_EPOCH),
                                     "the teacher has 3 outputs"),
        "model for other inputs": (lambda: born_again(nine_inputs, train, val, optim=ONE_EPOCH),
                                   "the model fails on a batch of shape (64, 8)"),
        "unknown ensemble member": (lambda: born_again(model_fn, train, val, optim=ONE_EPOCH,
                                                       ban=BornAgainConfig(ensembles={"T+CE": ["teacher", "CE"]})),
                                    "ensemble 'T+CE' names CE"),
        "missing shared layer": (lambda: born_again(model_fn, train, val, optim=ONE_EPOCH, ban=BornAgainConfig(share_layers=["conv1"])),
                                 "ban.share_layers: cannot share 'conv1'"),
        "no seeds": (lambda: born_again(model_fn, train, val, optim=ONE_EPOCH, seeds=[]), "seeds must be a non-empty list"),
        "a generator as data": (lambda: born_again(model_fn, ((x[i:i + 8], y[i:i + 8]) for i in range(0, 64, 8)), val, optim=ONE_EPOCH),
                                "train is a one-shot iterator (generator)"),
        "labels of one class": (lambda: born_again(model_fn, (x, torch.zeros_like(y)), val, optim=ONE_EPOCH),
                                "every training label is 0, so there is nothing to tell apart; check the labels"),
        "labels all padding": (lambda: born_again(model_fn, (x, torch.full_like(y, -100)), val, optim=ONE_EPOCH),
                               "every training label is padding, so there is nothing to tell apart"),
        "a label beyond the first batch's": (lambda: born_again(model_fn, (x, torch.where(torch.arange(64) == 63, 9, y)), val,
                                                                optim=ONE_EPOCH), "the labels range over [0, 9]"),
        "a control named like a path": (lambda: born_again(model_fn, train, val, optim=ONE_EPOCH,
                                                           ban=BornAgainConfig(controls={"../../x": {}})),
                                        "labelled with letters, digits and _ . + * - (they name files)"),
        "a control option out of range": (lambda: born_again(model_fn, train, val, optim=ONE_EPOCH,
                                                             ban=BornAgainConfig(controls={"LS": {"label_smoothing": 2}})),
                                          "LS's loss ce with options {'label_smoothing': 2}: label_smoothing must be between 0 and 1, got 2"),
        "a list of single examples": (lambda: born_again(model_fn, list(zip(x.numpy(), y.numpy())), val, optim=ONE_EPOCH),
                                      "this looks like a list of single examples"),
        "a NumPy number in loss options": (lambda: born_again(model_fn, train, val, optim=ONE_EPOCH,
                                                              ban=BornAgainConfig(loss="ban+l", loss_options={"label_weight": np.float64(0.5)})),
                                           "cannot be written to config.yaml"),
    }


CASES = list(refusals(lambda: None, ((torch.zeros(1), torch.zeros(1)),) * 2))


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_before_anything_is_trained_or_written(case, model_fn, data, trainings, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    call, message = refusals(model_fn, data)[case]
    with pytest.raises(UserError) as refused:
        call()
    assert message in str(refused.value) and "\n" not in str(refused.value)
    assert trainings == [] and list(tmp_path.iterdir()) == []


def test_float64_inputs_and_int8_labels_train_as_float32_and_int64(model_fn, data):
    (x, y), (vx, vy) = data
    result = born_again(model_fn, (x.double(), y.to(torch.int8)), (vx.double().numpy(), vy.numpy()), optim=ONE_EPOCH,
                        ban=BornAgainConfig(generations=1))
    assert set(result.models) == {"teacher", "BAN-1"}


def test_what_the_checks_must_not_refuse(model_fn, data):
    """NaN that the transform removes; a factory sharing a frozen layer (a pretrained embedding) between models."""
    (x, y), val = data
    with_nan = torch.where(torch.arange(64)[:, None] == 40, float("nan"), x)
    cleaned = born_again(model_fn, (with_nan, y), val, optim=ONE_EPOCH, ban=BornAgainConfig(generations=0),
                         transform=lambda x, generator, train: x.nan_to_num())
    assert list(cleaned.models) == ["teacher"]
    frozen = torch.nn.Linear(8, 8).requires_grad_(False)
    shares = born_again(lambda: torch.nn.Sequential(frozen, torch.nn.ReLU(), torch.nn.Linear(8, 4)), (x, y), val,
                        optim=ONE_EPOCH, ban=BornAgainConfig(generations=1))
    assert shares.models["teacher"][0] is shares.models["BAN-1"][0]


def test_out_is_checked_before_training(model_fn, data, trainings, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"^out=.* holds files that are not a banets run \(notes.txt\)"):
        born_again(model_fn, *data, optim=ONE_EPOCH, out=tmp_path)
    assert trainings == [] and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def focal(student_logits, teacher_logits, labels, gamma: float = 2.0):
    """A loss of your own: focal loss on the labels plus the BAN term."""
    log_p = F.log_softmax(student_logits.float(), -1).gather(1, labels[:, None]).squeeze(1)
    return -((1 - log_p.exp()) ** gamma * log_p).mean() + losses.ban(student_logits, teacher_logits, labels)


def test_a_callable_loss_goes_where_a_loss_name_does(model_fn, data, tmp_path):
    calls = []

    def counting(*args, gamma: float = 2.0):
        calls.append(gamma)
        return focal(*args, gamma=gamma)

    ban = BornAgainConfig(generations=1, loss=counting, loss_options={"gamma": 1.0}, extra_losses=[focal])
    run = born_again(model_fn, *data, ban=ban, optim=ONE_EPOCH, out=tmp_path / "run")
    assert list(run.models) == ["teacher", "COUNTING-1", "FOCAL"] and calls and set(calls) == {1.0}
    config = SeedDirectory(tmp_path / "run" / "seed-0").config()
    assert config["ban"]["loss"].endswith(":test_a_callable_loss_goes_where_a_loss_name_does.<locals>.counting")
    assert config["ban"]["extra_losses"] == ["test_api:focal"]
    with pytest.raises(UserError, match="takes \\(student_logits, teacher_logits, labels\\)"):
        born_again(model_fn, *data, ban=BornAgainConfig(loss=lambda logits: logits.sum()), optim=ONE_EPOCH)


def test_a_registered_loss_is_named_by_configs(model_fn, data, monkeypatch):
    monkeypatch.setattr(losses, "_LOSSES", dict(losses._LOSSES))  # the registration stays in this test
    losses.register("focal+ban")(focal)
    assert "focal+ban" in losses.names() and losses.name_of(focal) == "focal+ban"
    run = born_again(model_fn, *data, ban=BornAgainConfig(generations=1, loss="focal+ban", loss_options={"gamma": 0.5}),
                     optim=ONE_EPOCH)
    assert run.results[0].plan[1].name == "FOCAL+BAN-1"
    losses.register("focal+ban")(focal)  # the same function again (a notebook cell run twice): accepted
    with pytest.raises(UserError, match="registered twice"):
        losses.register("focal+ban")(lambda s, t, y: s.sum())
    by_path = born_again(model_fn, *data, ban=BornAgainConfig(generations=1, loss="test_api:focal"), optim=ONE_EPOCH)
    assert list(by_path.models) == ["teacher", "FOCAL-1"]


def test_a_python_run_resumes_from_python_and_reports_and_loads(model_fn, data, tmp_path, monkeypatch, capsys):
    from banets.cli import main

    optim = TrainConfig(epochs=2, progress="none")
    straight = born_again(model_fn, *data, ban=BornAgainConfig(generations=1), optim=optim, out=tmp_path / "straight")
    calls = {"n": 0}
    on_epoch_end = SeedDirectory.on_epoch_end

    def crash(self, spec, trainer, record):
        on_epoch_end(self, spec, trainer, record)
        calls["n"] += 1
        if calls["n"] == 3:  # BAN-1, epoch 1
            raise KeyboardInterrupt

    monkeypatch.setattr(SeedDirectory, "on_epoch_end", crash)
    with pytest.raises(KeyboardInterrupt):
        born_again(model_fn, *data, ban=BornAgainConfig(generations=1), optim=optim, out=tmp_path / "crashed")
    assert f"interrupted; continue with born_again(..., out='{tmp_path / 'crashed'}', resume=True)" in capsys.readouterr().err
    monkeypatch.setattr(SeedDirectory, "on_epoch_end", on_epoch_end)
    with pytest.raises(UserError, match=r"already holds seed 0; continue it with born_again\(\.\.\., out='.*crashed', resume=True\)"):
        born_again(model_fn, *data, ban=BornAgainConfig(generations=1), optim=optim, out=tmp_path / "crashed")
    assert main(["resume", str(tmp_path / "crashed")]) == 1  # unfinished, and the CLI cannot rebuild your model
    assert "continue it from Python with born_again(..., out=DIR, resume=True)" in capsys.readouterr().err
    (x, y), *rest = data
    with pytest.raises(UserError, match=r"the data differ from those .*seed-0 was started with \(data.json differs\)"):
        born_again(model_fn, (x + 1, y), *rest, ban=BornAgainConfig(generations=1), optim=optim, out=tmp_path / "crashed", resume=True)
    resumed = born_again(model_fn, *data, ban=BornAgainConfig(generations=1), optim=optim, out=tmp_path / "crashed", resume=True)
    for name in ("teacher", "BAN-1"):
        ours, theirs = resumed.models[name].state_dict(), straight.models[name].state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    assert (tmp_path / "crashed" / "report" / "report.md").is_file()  # born_again(out=) reports as `banets run` does
    assert main(["report", str(tmp_path / "crashed")]) == 0
    assert "MLP" in capsys.readouterr().out  # the architecture, from the model's class
    with pytest.raises(UserError, match="pass it: load\\(..., model_fn="):
        banets.load(tmp_path / "crashed", "BAN-1")
    loaded = banets.load(tmp_path / "crashed", "BAN-1", model_fn=model_fn)
    assert not loaded.training and torch.equal(loaded(data[1][0]), resumed.models["BAN-1"].eval()(data[1][0]))


def test_numpy_data_and_results_json_rows_match_the_report(model_fn, data, tmp_path):
    train, val = ((x.numpy().astype(np.float64), y.numpy()) for x, y in data)
    run = born_again(model_fn, train, val, ban=BornAgainConfig(generations=2), optim=ONE_EPOCH, out=tmp_path / "np")
    saved = json.loads((tmp_path / "np" / "seed-0" / "results.json").read_text())["val"]
    assert [r["model"] for r in saved] == [r["model"] for r in run.rows("val")] == ["teacher", "BAN-1", "BAN-2", "Ens*2"]
    assert saved == json.loads(json.dumps(run.rows("val")))  # one function computes both


def test_defaults_are_short_and_quiet_per_model(model_fn, data, capsys):
    assert TrainConfig().epochs == 10 and TrainConfig().progress == "model"
    born_again(model_fn, *data, ban=BornAgainConfig(generations=1), optim=TrainConfig(epochs=3))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith("teacher (model 1/2, seed 0 [1/1]) epoch 3")  # one line per model


def test_a_language_model_from_python_is_bootstrapped_by_rows(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 12, (40, 9), generator=gen)
    data = (tokens[:, :-1], tokens[:, 1:])  # next-token prediction over rows of 8 steps
    lm = lambda: torch.nn.Sequential(torch.nn.Embedding(12, 8), torch.nn.Linear(8, 12))  # noqa: E731
    run = born_again(lm, data, data, ban=BornAgainConfig(generations=1), optim=ONE_EPOCH, batch_size=8, out=tmp_path / "lm")
    manifest = SeedDirectory(tmp_path / "lm" / "seed-0").manifest
    assert (manifest["metric"], manifest["bootstrap_block"]) == ("perplexity", 8)
    assert run.rows("val")[0]["metric"] == "perplexity"


def test_a_different_trained_teacher_is_refused_when_the_run_continues(model_fn, data, tmp_path):
    teacher = model_fn()
    born_again(model_fn, *data, ban=BornAgainConfig(generations=1), teacher=teacher, optim=ONE_EPOCH, out=tmp_path / "o")
    with pytest.raises(UserError, match="the trained teacher given now differs from the one this run was started with"):
        born_again(model_fn, *data, ban=BornAgainConfig(generations=1, ensembles={"T+B": ["teacher", "BAN-1"]}),
                   teacher=model_fn(), optim=ONE_EPOCH, out=tmp_path / "o", resume=True)


def test_partial_losses_are_named_by_their_function():
    import functools

    assert losses.name_of(functools.partial(focal, gamma=1.0)) == "test_api:focal"


def test_a_dataset_from_python_is_fingerprinted_so_a_resume_with_other_data_is_refused(model_fn, data, tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    (x, y), val = data
    optim = TrainConfig(epochs=1, progress="none")
    born_again(model_fn, TensorDataset(x, y), val, ban=BornAgainConfig(generations=1), optim=optim, out=tmp_path / "o")
    recorded = json.loads((tmp_path / "o" / "seed-0" / "data.json").read_text())
    assert set(recorded) == {"train", "val"}  # the Dataset's fingerprint beside the tensors' digest
    more = BornAgainConfig(generations=1, ensembles={"T+B": ["teacher", "BAN-1"]})  # something left to do
    for other in (TensorDataset(x[:-1], y[:-1]), DataLoader(TensorDataset(x, (y + 1) % 4), batch_size=16)):
        with pytest.raises(UserError, match=r"\(data.json differs\)"):
            born_again(model_fn, other, val, ban=more, optim=optim, out=tmp_path / "o", resume=True)
    loader = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True)  # the same examples, loaded otherwise
    resumed = born_again(model_fn, loader, val, ban=more, optim=optim, out=tmp_path / "o", resume=True)
    assert "T+B" in resumed.results[0].ensembles and "T+B" in resumed.results[0].predictions["val"]


def test_an_iterable_dataset_trains_in_its_own_order(model_fn, data):
    class Stream(torch.utils.data.IterableDataset):
        def __init__(self, pair):
            self.pair = pair

        def __iter__(self):
            return zip(*self.pair)

    train, val = data
    run = born_again(model_fn, Stream(train), Stream(val), optim=ONE_EPOCH, batch_size=16)
    assert len(run.results[0].predictions["val"]["teacher"].labels) == 32
    assert torch.equal(run.results[0].predictions["val"]["teacher"].labels, val[1])  # in the order it yields


def test_a_step_schedule_on_data_without_a_length_is_refused_before_anything_is_written(model_fn, data, tmp_path):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return zip(*data[0])

    optim = TrainConfig(epochs=1, progress="none", schedule="linear", schedule_every="step")
    with pytest.raises(UserError) as refused:
        born_again(model_fn, Stream(), data[1], optim=optim, out=tmp_path / "o")
    assert str(refused.value) == ("optim.schedule_every=step needs training data of known length (a tensor pair, a list "
                                  "of batches, a map-style Dataset or a DataLoader of one), to know the steps of the "
                                  "training")
    assert not (tmp_path / "o").exists()


def test_without_a_plan_born_again_trains_a_teacher_free_control_and_the_plain_ensemble_of_equal_cost(model_fn, data,
                                                                                                     tmp_path):
    (x, y), val = data
    run = born_again(model_fn, (x, y), val, optim=ONE_EPOCH, out=tmp_path / "run")
    assert set(run.models) == {"teacher", "BAN-1", "BAN-2", "BAN-3", "CE"}
    assert run.results[0].ensembles["T+CE"] == ["teacher", "CE"]
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "**Answer.**" in report and "With one seed this is not yet a verdict" in report
    assert "T+CE" in report.split("**Answer.**")[1].split("\n")[0]  # the answer weighs the plain ensemble


def test_a_run_from_python_scores_its_training_examples_for_the_teachers_gap(model_fn, data, tmp_path):
    (x, y), val = data
    born_again(model_fn, (x, y), val, optim=ONE_EPOCH, ban=BornAgainConfig(generations=1), out=tmp_path / "out")
    train = SeedDirectory(tmp_path / "out" / "seed-0").load_predictions("train")["teacher"]
    assert torch.equal(train.labels, y)  # every training example once, in order
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    assert f"The teacher's NLL is {train.mean_nll():.3f} on its training examples" in report
