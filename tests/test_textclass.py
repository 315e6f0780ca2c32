"""The ``textclass`` dataset: labelled texts from CSV or JSON Lines, tokenized once (banets' words or a Hugging Face
tokenizer.json), batches of named inputs padded to their longest text; and the textclass_quick preset end to end."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch

from banets.cli import main
from banets.config import DataConfig
from banets.data.registry import DataError, build_dataset
from banets.runs import SeedDirectory

POSITIVE, NEGATIVE, FILLER = "good great fine".split(), "bad awful poor".split(), "the a film was is and it".split()


def reviews(count: int, seed: int = 0) -> list[dict]:
    """Short made-up reviews whose label is the sentiment word they hold."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        label = rng.choice(["pos", "neg"])
        words = [rng.choice(FILLER) for _ in range(rng.randint(1, 9))] + [rng.choice(POSITIVE if label == "pos"
                                                                                     else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words).capitalize() + ".", "label": label})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_a_csv_of_named_labels_gives_padded_named_batches_and_records_its_classes(tmp_path):
    rows = reviews(30)
    data = build_dataset(DataConfig(dataset="textclass", path=str(write_csv(tmp_path / "r.csv", rows)), val_size=10,
                                    batch_size=4, eval_batch_size=4, tokenizer="words"))
    assert data.model_options["num_classes"] == 2 and json.loads(data.files["classes.json"]) == ["neg", "pos"]
    words = json.loads(data.files["vocab.json"])["words"]
    assert "good" in words or "bad" in words
    x, y = next(iter(data.val))
    assert set(x) == {"input_ids", "attention_mask"} and y.shape == (4,)
    lengths = x["attention_mask"].sum(1)
    assert x["input_ids"].shape[1] == int(lengths.max())  # padded to the longest of the batch
    assert torch.equal(x["attention_mask"], (torch.arange(x["input_ids"].shape[1]) < lengths[:, None]).long())
    first = [words[i] for i in x["input_ids"][0, : int(lengths[0])]]
    assert first[-1] == "." and all(w in words for w in first)
    assert sum(len(labels) for _, labels in data.val) == 10 and sum(len(labels) for _, labels in data.train) == 20


def test_jsonl_with_integer_labels_validation_and_test_files_and_max_length(tmp_path):
    rows = [{"body": r["text"], "stars": int(r["label"] == "pos") * 4} for r in reviews(24)]
    paths = [write_jsonl(tmp_path / f"{name}.jsonl", part) for name, part in
             (("train", rows[:16]), ("val", rows[16:20]), ("test", rows[20:]))]
    data = build_dataset(DataConfig(dataset="textclass", path=str(paths[0]), val_path=str(paths[1]),
                                    test_path=str(paths[2]), text_column="body", label_column="stars",
                                    max_length=3, batch_size=16, tokenizer="words"))
    assert data.model_options["num_classes"] == 5 and "classes.json" not in data.files  # the integers are the classes
    x, y = next(iter(data.train_eval))
    assert x["input_ids"].shape[1] <= 3
    assert sorted(y.tolist()) == sorted(r["stars"] for r in rows[:16])
    assert [y.tolist() for _, y in data.test] == [[r["stars"] for r in rows[20:]]]


def test_a_hugging_face_tokenizer_json_tokenizes_with_its_special_tokens(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *sorted({*POSITIVE, *NEGATIVE, *FILLER})])}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.post_processor = tokenizers.processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                                        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    (tmp_path / "tok").mkdir()
    tokenizer.save(str(tmp_path / "tok" / "tokenizer.json"))
    data = build_dataset(DataConfig(dataset="textclass", path=str(write_csv(tmp_path / "r.csv", reviews(12))),
                                    val_size=4, batch_size=8, tokenizer=f"hf:{tmp_path / 'tok'}"))
    assert data.model_options["vocab_size"] == len(vocab) and "tokenizer.json" in data.files
    x, _ = next(iter(data.val))
    assert (x["input_ids"][:, 0] == 2).all()  # [CLS] first
    ends = x["attention_mask"].sum(1) - 1
    assert (x["input_ids"][torch.arange(len(ends)), ends] == 3).all()  # [SEP] last
    assert ((x["input_ids"] == 0) == (x["attention_mask"] == 0)).all()  # [PAD] where the mask is 0


def test_from_step_gives_the_epochs_remaining_batches(tmp_path):
    data = build_dataset(DataConfig(dataset="textclass", path=str(write_csv(tmp_path / "r.csv", reviews(40))),
                                    val_size=8, batch_size=5, tokenizer="words"))
    torch.manual_seed(3)
    whole = list(data.train)
    torch.manual_seed(3)
    rest = list(data.train.from_step(2))  # type: ignore[attr-defined]
    assert len(whole) == 7 and len(rest) == 5
    for (x, y), (x2, y2) in zip(whole[2:], rest):
        assert torch.equal(y, y2) and torch.equal(x["input_ids"], x2["input_ids"])


@pytest.mark.parametrize("setup, message", [
    (lambda p: write_csv(p / "r.csv", [{"review": "x", "label": "a"}]),
     "textclass: the header of r.csv has no 'text' column (it has review, label); set data.text_column and "
     "data.label_column"),
    (lambda p: (p / "r.csv").write_text("text,label\na,pos\nb\n") and p / "r.csv",
     "textclass: line 3 of r.csv has no 'label' (it has text); set data.text_column and data.label_column, or fill"),
    (lambda p: write_csv(p / "r.csv", [*reviews(5), {"text": "x", "label": " "}, *reviews(5)]),
     "textclass: line 7 of r.csv has an empty label; fill it or remove the row"),
    (lambda p: write_csv(p / "r.csv", [{"text": f"line {i}", "label": "pos"} for i in range(12)]),
     "every training label is 'pos', so there is nothing to tell apart; check data.label_column (a classifier"),
    (lambda p: write_jsonl(p / "r.jsonl", [{"text": f"line {i}", "label": 1} for i in range(12)]),
     "every training label is 1, so there is nothing to tell apart"),

    (lambda p: (p / "r.jsonl").write_text('{"text": "a", "label": 1}\n{"text": "b"}\n') and p / "r.jsonl",
     "textclass: line 2 of r.jsonl has no 'label' (it has text); set data.text_column and data.label_column, or fill"),
    (lambda p: (p / "r.jsonl").write_text('{"text": "a", "label": 1}\n{"text": oops}\n') and p / "r.jsonl",
     "textclass: line 2 of r.jsonl is not JSON (Expecting value); write one object per line"),
    (lambda p: (p / "r.jsonl").write_text("\n") and p / "r.jsonl",
     "textclass: r.jsonl holds no rows; write one text and label per row"),
    (lambda p: (p / "r.txt").write_text("a\n") and p / "r.txt",
     "textclass: r.txt is neither .csv nor .jsonl; save the texts and labels as one of them"),
    (lambda p: write_csv(p / "r.csv", reviews(4)),
     "data.val_size=4 must be between 1 and 3 (the training file"),
])
def test_a_bad_file_is_one_line_naming_the_fix(tmp_path, setup, message):
    path = setup(tmp_path)
    with pytest.raises(DataError) as error:
        build_dataset(DataConfig(dataset="textclass", path=str(path), tokenizer="words", val_size=4))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_missing_tokenizer_json_says_how_to_save_one(tmp_path):
    with pytest.raises(DataError, match=r"no tokenizer.json at .*tokenizer.save_pretrained\(DIR\)"):
        build_dataset(DataConfig(dataset="textclass", path=str(write_csv(tmp_path / "r.csv", reviews(12))),
                                 val_size=4, tokenizer=f"hf:{tmp_path}"))


def test_the_textclass_preset_trains_born_again_on_a_csv_through_the_cli(tmp_path, capsys):
    path = write_csv(tmp_path / "reviews.csv", reviews(60))
    argv = ["run", "textclass_quick", "--data-dir", str(path), "--set", "data.val_size=12", "--set",
            "data.batch_size=16", "--set", "model.options={dim: 8, layers: 1, heads: 2}", "--set", "optim.epochs=1",
            "--set", "optim.warmup_steps=1", "--set", "optim.progress=none", "--out", str(tmp_path / "out")]
    assert main(argv) == 0, capsys.readouterr().err
    run = SeedDirectory(tmp_path / "out" / "seed-0")
    assert {"teacher", "BAN+L-1", "BAN+L-2", "CE"} <= set(run.manifest["models"])
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    assert "| T+CE |" in report and "| Ens*2 |" in report
    assert main(["resume", str(tmp_path / "out")]) == 0  # finished: the data compare equal on resume


def test_a_language_model_corpus_refuses_a_hugging_face_tokenizer_in_one_line(tmp_path, capsys):
    from test_lm_pipeline import write_markov_text

    write_markov_text(tmp_path / "corpus")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "corpus").iterdir())
    assert main(["run", "wap_quick", "--data-dir", str(tmp_path / "corpus"), "--set", f"data.tokenizer=hf:{tmp_path}",
                 "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == (
        f"banets: error: text: data.tokenizer=hf:{tmp_path} is not one of whitespace, words (a Hugging Face tokenizer "
        f"reads labelled texts, the textclass dataset)\n")
    assert not (tmp_path / "out").exists()
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "corpus").iterdir()) == before


def test_a_spreadsheets_byte_order_mark_is_not_part_of_the_header(tmp_path):
    (tmp_path / "r.csv").write_bytes("\ufefftext,label\n".encode() + b"a good one,pos\nb bad one,neg\n" * 4)
    data = build_dataset(DataConfig(dataset="textclass", path=str(tmp_path / "r.csv"), tokenizer="words", val_size=4))
    assert json.loads(data.files["classes.json"]) == ["neg", "pos"]
