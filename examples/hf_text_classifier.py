"""Born-again fine-tuning of a Hugging Face classifier on labelled texts of your own (a CSV with text and label
columns), through the Python API: `python examples/hf_text_classifier.py reviews.csv --model DIR --out runs/hf`.
DIR is a local model folder with its tokenizer (nothing is downloaded), e.g. one written by
`huggingface-cli download distilbert-base-uncased --local-dir DIR` on a machine with a network."""

import argparse
import csv

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from banets import BornAgainConfig, TrainConfig, born_again


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("csv")
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", default="runs/hf-text")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with open(args.csv, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    classes = sorted({row["label"] for row in rows})
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    texts = tokenizer([row["text"] for row in rows], padding=True, truncation=True, max_length=128, return_tensors="pt")
    labels = torch.tensor([classes.index(row["label"]) for row in rows])
    fifth = len(rows) // 5  # the first fifth validates
    train, val = (({name: ids[part] for name, ids in texts.items()}, labels[part])
                  for part in (slice(fifth, None), slice(fifth)))
    born_again(  # input_ids, attention_mask... reach the model by name; its output's .logits are used
        lambda: AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=len(classes),
                                                                   local_files_only=True),
        train, val, batch_size=16, out=args.out, seeds=[0, 1],
        ban=BornAgainConfig(generations=2, loss="ban+l", loss_options={"anneal": True}, controls={"CE": {}}),
        optim=TrainConfig(epochs=args.epochs, optimizer="adamw", lr=5e-5, weight_decay=0.01, schedule="linear",
                          schedule_every="step", warmup_steps=10),
    )  # the CE control (another seed, no teacher) brings the plain ensemble of equal cost, T+CE
    print(f"the answer, with every model against the teacher: {args.out}/report/report.md")


if __name__ == "__main__":
    main()
