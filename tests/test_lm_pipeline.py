"""`banets run` on a language model, end to end: a shrunk wap_quick preset (teacher + BAN+L-1) on a generated
raw-text corpus, through the run directory, resume and the per-token distillation loss (Sec. 4.2, Table 6)."""

from __future__ import annotations

import json
import math
import random
import string
from itertools import product
from pathlib import Path

import pytest
import torch

from banets import losses
from banets.cli import main
from banets.config import load_config
from banets.data.text import BpttBatches, Vocabulary, load_corpus
from banets.experiment import model_factory, run_experiment
from banets.models import create_model
from banets.runs import SeedDirectory, RunError, load_checkpoint
from tiny import tiny_lm

SHRINK = tiny_lm(size=16, epochs=2, batch_size=8, bptt=10)


def write_markov_text(folder: Path, seed: int = 0) -> None:
    """Raw sentences (capitalised, with punctuation) from a made-up Markov chain over 30 words: learnable text
    in the layout of the War and Peace folder, ``tiny.{train,valid,test}.txt``."""
    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase, k=4)) for _ in range(30)]
    successors = {word: rng.sample(words, 2) for word in words}
    folder.mkdir(parents=True)
    for split, n_lines in (("train", 300), ("valid", 40), ("test", 40)):
        lines = []
        for _ in range(n_lines):
            sentence = [rng.choice(words)]
            while len(sentence) < rng.randint(4, 12):
                sentence.append(rng.choice(successors[sentence[-1]]))
            lines.append(" ".join(sentence).capitalize() + rng.choice([".", "!", "?"]))
        (folder / f"tiny.{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory) -> tuple[Path, Path]:
    """The corpus folder and the seed directory of one finished shrunk wap_quick run."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lm")
    write_markov_text(root / "corpus")
    assert main(["run", "wap_quick", *SHRINK, "--data-dir", str(root / "corpus"), "--out", str(root / "out")]) == 0
    return root / "corpus", root / "out" / "seed-0"


def load_model(seed_dir: Path, name: str, vocab: Vocabulary) -> torch.nn.Module:
    run = SeedDirectory(seed_dir)
    entry, config = run.manifest["models"][name], run.config()
    model = create_model(config["model"]["name"], vocab_size=len(vocab), **config["model"]["options"])
    model.load_state_dict(load_checkpoint(seed_dir / entry["checkpoint"], entry["sha256"])["model"])
    return model.eval()


def test_run_directory_holds_the_vocabulary_models_and_finite_perplexities(lm_run) -> None:
    _, seed_dir = lm_run
    vocab = Vocabulary.load(seed_dir / "vocab.json")
    assert vocab.words[:2] == ["<unk>", "<eos>"] and {".", "!", "?"} <= set(vocab.words) and len(vocab) == 35
    manifest = json.loads((seed_dir / "manifest.json").read_text())
    assert {name: e["status"] for name, e in manifest["models"].items()} == {"teacher": "done", "BAN+L-1": "done"}
    assert manifest["models"]["BAN+L-1"]["loss"] == "ban+l" and manifest["models"]["BAN+L-1"]["teacher"] == "teacher"
    run = SeedDirectory(seed_dir)
    for split in ("val", "test"):
        predictions = run.load_predictions(split)
        assert set(predictions) == {"teacher", "BAN+L-1"}
        for p in predictions.values():
            assert 1.0 < p.perplexity() < len(vocab)  # finite and better than a uniform guess
    assert (seed_dir / "results.json").is_file() and (seed_dir.parent / "report" / "report.md").is_file()


def test_teacher_validation_perplexity_falls_over_epochs(lm_run) -> None:
    _, seed_dir = lm_run
    records = [json.loads(line) for line in (seed_dir / "metrics.jsonl").read_text().splitlines()]
    teacher = [math.exp(r["val_nll"]) for r in records if r["model"] == "teacher"]
    assert len(teacher) == 2
    assert teacher[1] < teacher[0] < 35  # below the uniform model's perplexity (the vocabulary size), and falling


def test_resume_reuses_the_saved_vocabulary(lm_run, capsys) -> None:
    corpus, seed_dir = lm_run
    saved = (seed_dir / "vocab.json").read_text(encoding="utf-8")
    before = {name: p.perplexity() for name, p in SeedDirectory(seed_dir).load_predictions("test").items()}
    train = corpus / "tiny.train.txt"
    original = train.read_text(encoding="utf-8")
    train.write_text(original + "Zzzz yyyy xxxx.\n" * 50, encoding="utf-8")  # a rebuilt vocabulary would differ
    try:
        assert main(["resume", str(seed_dir.parent)]) == 0
    finally:
        train.write_text(original, encoding="utf-8")
    capsys.readouterr()
    assert (seed_dir / "vocab.json").read_text(encoding="utf-8") == saved
    after = {name: p.perplexity() for name, p in SeedDirectory(seed_dir).load_predictions("test").items()}
    assert after == pytest.approx(before, rel=1e-6)


def test_resume_refuses_a_corpus_whose_text_changed(lm_run) -> None:
    corpus, seed_dir = lm_run
    valid = corpus / "tiny.valid.txt"
    original = valid.read_text(encoding="utf-8")
    valid.write_text("\n".join(reversed(original.splitlines())) + "\n", encoding="utf-8")  # the same words, reordered
    try:
        with pytest.raises(RunError, match=r"the data differ from those .*seed-0 was started with \(data.json differs\)"):
            run_experiment(load_config(str(seed_dir / "config.yaml")), seed_dir.parent, resume=True)
    finally:
        valid.write_text(original, encoding="utf-8")


def test_a_run_made_before_corpora_were_digested_still_resumes(lm_run, tmp_path) -> None:
    import shutil

    _, seed_dir = lm_run
    out = tmp_path / "out"
    shutil.copytree(seed_dir.parent, out)
    (out / "seed-0" / "data.json").unlink()
    config = load_config(str(out / "seed-0" / "config.yaml"))
    with pytest.raises(RunError, match=r"\(data.json differs\)"):  # a file the run recorded, now missing
        run_experiment(config, out, resume=True)
    manifest = json.loads((out / "seed-0" / "manifest.json").read_text())
    del manifest["data_files"]  # as a run made before banets recorded the corpus' digests
    manifest["format_version"] = 1
    (out / "seed-0" / "manifest.json").write_text(json.dumps(manifest))
    run_experiment(config, out, resume=True)  # not refused: data.json was never written


@pytest.mark.parametrize("loss_name", ["ban", "ban+l"])
def test_distillation_loss_is_the_vision_loss_per_token(lm_run, loss_name: str) -> None:
    corpus, seed_dir = lm_run
    vocab = Vocabulary.load(seed_dir / "vocab.json")
    teacher, student = load_model(seed_dir, "teacher", vocab), load_model(seed_dir, "BAN+L-1", vocab)
    x, y = next(iter(BpttBatches(load_corpus(corpus, tokenizer="words", vocab=vocab).valid, 4, 6)))
    with torch.no_grad():
        t, s = teacher(x), student(x)  # (4, 6, V)
    terms = losses.get(loss_name)

    def loss(*args):
        return losses.total(terms(*args))

    per_token = [loss(s[i, j][None], t[i, j][None], y[i, j][None]) for i in range(4) for j in range(6)]  # 24 one-row batches
    assert s.shape == (4, 6, len(vocab))
    torch.testing.assert_close(loss(s, t, y), torch.stack(per_token).mean())


@pytest.mark.parametrize("preset", ["ptb_paper", "table6_lstm", "table6_cnn_lstm", "wap_quick", "wap_transformer"])
def test_preset_costs_state_the_parameter_count(preset: str) -> None:
    config = load_config(preset)
    size = config.data.max_vocab
    words = ["<unk>", "<eos>", *("".join(w) for w in product(string.ascii_lowercase, repeat=3))][:size]
    model = model_factory(config.model.name, config.model.options, {"vocab_size": size, "words": words})()
    params = sum(p.numel() for p in model.parameters())
    if config.model.name.startswith("cnn_lstm"):  # less the character table: padding, word begin and end, a-z, <unk>, <eos>
        assert f"{params - 15 * 31:,} params + 15 per character" in config.cost
    else:
        assert f"{params:,} params" in config.cost


def test_the_report_states_the_teachers_gap_between_its_training_and_validation_text(lm_run):
    _, seed_dir = lm_run
    train = SeedDirectory(seed_dir).load_predictions("train")["teacher"]
    val = SeedDirectory(seed_dir).load_predictions("val")["teacher"]
    assert len(train.labels) > len(val.labels)  # every training token scored once, as the validation text is
    report = (seed_dir.parent / "report" / "report.md").read_text()
    assert f"The teacher's NLL is {train.mean_nll():.3f} on its training examples and {val.mean_nll():.3f} on " \
           f"validation (a gap of {val.mean_nll() - train.mean_nll():.3f} nats). In our" in report  # no error for text
