"""``model.name: hf:<path>``: transformers models from a local folder (pretrained weights) or a config.json
(random weights), the head by ``task``, the classes from the data; nothing is downloaded. Tiny random configs only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from banets import BornAgainConfig, TrainConfig, born_again
from banets.cli import main
from banets.models import create_model
from banets.models.registry import ModelError
from banets.report import read_runs
from test_lm_pipeline import write_markov_text
from test_named_inputs import as_dicts, examples
from test_textclass import FILLER, NEGATIVE, POSITIVE, reviews, write_csv
from tiny import tiny_lm

ROOT = Path(__file__).resolve().parents[1]

transformers = pytest.importorskip("transformers")
VOCAB = 12


def bert_config(folder: Path, **fields) -> Path:
    """A 2-layer BERT of width 16, saved as ``folder/config.json``."""
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, **fields)
    config.save_pretrained(folder)
    return folder / "config.json"


def gpt2_config(folder: Path) -> Path:
    config = transformers.GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    config.save_pretrained(folder)
    return folder / "config.json"


def test_a_config_json_builds_random_weights_with_the_datas_classes_and_vocabulary(tmp_path):
    path = bert_config(tmp_path)
    model = create_model(f"hf:{path}", num_classes=3, vocab_size=20)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_labels == 3 and model.config.vocab_size == 20
    assert model.bert.embeddings.word_embeddings.weight.shape == (20, 16)
    fields = create_model(f"hf:{path}", num_classes=3, hidden_dropout_prob=0.0, num_hidden_layers=1)
    assert fields.config.hidden_dropout_prob == 0.0 and len(fields.bert.encoder.layer) == 1


def test_a_pretrained_folder_builds_its_weights_and_a_new_head_of_the_datas_classes(tmp_path):
    torch.manual_seed(0)
    saved = transformers.BertModel(transformers.BertConfig.from_json_file(bert_config(tmp_path / "config")))
    saved.save_pretrained(tmp_path / "pretrained")
    model = create_model(f"hf:{tmp_path / 'pretrained'}", num_classes=4, vocab_size=VOCAB - 2)  # its vocabulary stays
    assert model.config.vocab_size == VOCAB and model.classifier.out_features == 4
    for key, value in saved.state_dict().items():
        assert torch.equal(model.bert.state_dict()[key], value), key
    with pytest.raises(ModelError) as error:  # the words tokenizer's ids, say, would run past its embeddings
        create_model(f"hf:{tmp_path / 'pretrained'}", num_classes=4, vocab_size=999)
    assert str(error.value).endswith("the data's vocabulary has 999 ids but the model embeds 12; tokenize with the "
                                     "model's own tokenizer: data.tokenizer=hf:DIR (its tokenizer.json)")


@pytest.mark.parametrize("name, options, message", [
    ("hf:bert-base-uncased", {}, "hf:bert-base-uncased: no local folder or config.json there, and banets downloads "
     "nothing; on a machine with a network run `huggingface-cli download bert-base-uncased --local-dir DIR`, then "
     "set model.name=hf:DIR"),
    ("hf:{folder}", {}, "the folder holds no config.json; give a pretrained folder (save_pretrained's), or the path "
     "of a config.json for random weights"),
    ("hf:{config_folder}", {}, "the folder holds config.json but no weights (model.safetensors, pytorch_model.bin); "
     "for random weights give the file: model.name=hf:{config}"),
    ("hf:{config}", {"max_length": 17}, "hf:{config}: data.max_length=17 is more than the model's 16 positions "
     "(max_position_embeddings); set data.max_length=16"),
    ("hf:{config}", {"task": "translation"}, "unknown task 'translation'; set model.options.task to one of "
     "sequence-classification, token-classification, causal-lm"),
    ("hf:{config}", {"n_wheels": 4}, "hf:{config}: its BertConfig has no field n_wheels; remove it from "
     "model.options (the task and config fields go there)"),
    ("hf:{config}", {"trust_remote_code": True, "cache_dir": "/tmp"}, "hf:{config}: cache_dir, trust_remote_code would "
     "change how transformers loads, not the model; remove it from model.options (banets reads the local folder "
     "only, and runs no code from it)"),
])
def test_what_cannot_be_built_is_one_line_saying_what_to_do(tmp_path, name, options, message):
    config = bert_config(tmp_path / "config")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError) as error:
        create_model(name.format(folder=tmp_path / "empty", config=config, config_folder=config.parent), **options)
    assert message.format(config=config) in str(error.value) and "\n" not in str(error.value)
    assert "cannot build" not in str(error.value)  # said once, not wrapped in transformers' failure


def test_the_data_must_fit_the_models_positions_and_embeddings_whatever_they_count_from(tmp_path):
    roberta = transformers.RobertaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=18)  # positions from pad + 1
    roberta.save_pretrained(tmp_path / "roberta")
    assert create_model(f"hf:{tmp_path / 'roberta' / 'config.json'}", num_classes=2, max_length=16)
    with pytest.raises(ModelError, match=r"data.max_length=17 is more than the model's 16 positions .*; set "
                                         r"data.max_length=16$"):
        create_model(f"hf:{tmp_path / 'roberta' / 'config.json'}", num_classes=2, max_length=17)
    transformers.GPT2LMHeadModel(transformers.GPT2Config.from_json_file(gpt2_config(tmp_path / "gpt2"))).save_pretrained(
        tmp_path / "gpt2")
    with pytest.raises(ModelError, match=r"the data's vocabulary has 999 ids but the model embeds 50; lower "
                                         r"data.max_vocab to 50$"):  # a corpus of words has no tokenizer to give
        create_model(f"hf:{tmp_path / 'gpt2'}", task="causal-lm", vocab_size=999)


def test_without_transformers_the_message_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers raises ImportError
    with pytest.raises(ModelError, match=r'needs transformers: pip install "banets\[hf\]"'):
        create_model(f"hf:{tmp_path}")


def test_born_again_trains_a_bert_classifier_on_named_inputs(tmp_path):
    path = bert_config(tmp_path)
    (named, labels), (val_named, val_labels) = examples(24, 0), examples(8, 1)
    run = born_again(lambda: create_model(f"hf:{path}", num_classes=3), as_dicts(named, labels),
                     as_dicts(val_named, val_labels), optim=TrainConfig(epochs=1, optimizer="adamw", lr=1e-3,
                                                                         progress="none"),
                     ban=BornAgainConfig(generations=1), out=tmp_path / "run")
    assert torch.equal(run.results[0].predictions["val"]["BAN-1"].labels, val_labels)
    assert (tmp_path / "run" / "report" / "report.md").is_file()
    assert not torch.equal(run.models["teacher"].classifier.weight, run.models["BAN-1"].classifier.weight)


def test_a_causal_lm_config_trains_born_again_on_a_text_corpus_through_the_cli(tmp_path, capsys):
    write_markov_text(tmp_path / "corpus")
    config = gpt2_config(tmp_path / "gpt")
    argv = ["run", "wap_quick", *tiny_lm(size=8, epochs=1, batch_size=8, bptt=10), "--data-dir",
            str(tmp_path / "corpus"), "--set", f"model.name=hf:{config}",
            "--set", "model.options={task: causal-lm, n_embd: 16}", "--out", str(tmp_path / "out")]
    assert main(argv) == 0, capsys.readouterr().err
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    assert "| BAN+L-1 | gen 1, ban+l from teacher |" in report and "perplexity" in report
    # the run reads a model folder outside it: resuming it is the user's word, as for a module it imports
    (tmp_path / "out" / "seed-0" / "results.json").unlink()  # unfinished: a resume has work to do
    capsys.readouterr()
    assert main(["resume", str(tmp_path / "out")]) == 1
    assert "records the module 'transformers'; banets imports no code that an output folder names" in \
        capsys.readouterr().err
    assert main(["resume", str(tmp_path / "out"), "--import", "transformers"]) == 0


def pretrained_bert_with_tokenizer(folder: Path) -> Path:
    """A tiny random BERT saved as a pretrained folder, with a word-level fast tokenizer of the reviews' words."""
    tokenizers = pytest.importorskip("tokenizers")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *sorted({*POSITIVE, *NEGATIVE, *FILLER, "."})]
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.normalizer = tokenizers.normalizers.Lowercase()
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    backend.post_processor = tokenizers.processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                                      special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                                     cls_token="[CLS]", sep_token="[SEP]")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def test_a_pretrained_model_and_its_tokenizer_train_on_a_csv_through_the_cli(tmp_path, capsys):
    folder = pretrained_bert_with_tokenizer(tmp_path / "bert")
    path = write_csv(tmp_path / "reviews.csv", reviews(40))
    argv = ["run", "textclass_quick", "--data-dir", str(path), "--set", f"model.name=hf:{folder}",
            "--set", "model.options={}", "--set", f"data.tokenizer=hf:{folder}", "--set", "data.val_size=8",
            "--set", "data.batch_size=8", "--set", "data.max_length=32", "--set", "optim.epochs=1",
            "--set", "optim.warmup_steps=1",
            "--set", "optim.progress=none", "--out", str(tmp_path / "out")]
    assert main(argv) == 0, capsys.readouterr().err
    [run] = read_runs([tmp_path / "out"])[0]
    assert {"teacher", "BAN+L-1", "BAN+L-2", "CE"} <= set(run.predictions["val"])
    assert len(run.predictions["val"]["teacher"].labels) == 8


def test_the_hugging_face_example_runs_on_a_csv_of_your_own(tmp_path):
    folder = pretrained_bert_with_tokenizer(tmp_path / "bert")
    path = write_csv(tmp_path / "reviews.csv", reviews(30))
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "hf_text_classifier.py"), str(path), "--model",
                           str(folder), "--out", str(tmp_path / "out"), "--epochs", "1"],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                                "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    runs = read_runs([tmp_path / "out"])[0]
    assert sorted(r.seed for r in runs) == [0, 1]
    assert {"teacher", "BAN+L-1", "BAN+L-2", "CE", "T+CE"} <= set(runs[0].predictions["val"])
    assert (tmp_path / "out" / "report" / "report.md").is_file()
    assert f"{tmp_path / 'out'}/report/report.md" in done.stdout


def test_a_model_name_to_download_is_one_line_from_the_cli_and_writes_nothing(tmp_path, capsys):
    path = write_csv(tmp_path / "reviews.csv", reviews(20))
    assert main(["run", "textclass_quick", "--data-dir", str(path), "--set", "data.val_size=4", "--set",
                 "model.name=hf:bert-base-uncased", "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == (
        "banets: error: hf:bert-base-uncased: no local folder or config.json there, and banets downloads nothing; on "
        "a machine with a network run `huggingface-cli download bert-base-uncased --local-dir DIR`, then set "
        "model.name=hf:DIR\n")  # said once, not wrapped in "the model factory failed"
    assert not (tmp_path / "out").exists()


def test_texts_longer_than_the_models_positions_are_refused_before_training_from_the_cli(tmp_path, capsys):
    """Batches are padded to their longest text, so the first batch may fit and a later one not: the data's
    max_length is checked against the model's positions before anything is written."""
    path = write_csv(tmp_path / "reviews.csv", reviews(20))
    assert main(["run", "textclass_quick", "--data-dir", str(path), "--set", "data.val_size=4", "--set",
                 f"model.name=hf:{bert_config(tmp_path / 'bert')}", "--set", "model.options={}", "--out",
                 str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == (
        f"banets: error: hf:{tmp_path / 'bert' / 'config.json'}: data.max_length=128 is more than the model's 16 "
        f"positions (max_position_embeddings); set data.max_length=16\n")
    assert not (tmp_path / "out").exists()
