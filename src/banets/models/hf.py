"""Hugging Face transformers models by name: ``model.name: hf:<path>``.

``<path>`` is local, and nothing is downloaded: a folder holding ``config.json`` and weights (``save_pretrained``'s
folder, or one ``huggingface-cli download`` wrote) builds the pretrained model, or a ``config.json`` file builds its
architecture with random weights. ``task`` picks the head (``AutoModelFor...``), the number of classes comes from
the data, and the model's remaining options set fields of its config (``n_layer``, ``hidden_dropout_prob``...).
A model is built from its config and weights only, never from code in the folder (``trust_remote_code`` stays off).
transformers is an optional extra: ``pip install "banets[hf]"``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.nn as nn

from banets.config import first_line
from banets.models.registry import ModelError

TASKS = {  # task: the transformers class that builds its head
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "causal-lm": "AutoModelForCausalLM",
}
LOCAL = {"local_files_only": True, "trust_remote_code": False}  # read the folder; run none of its code
# keyword arguments of transformers' loaders, not fields of a model's config: refused in model.options
LOADER_OPTIONS = {"trust_remote_code", "code_revision", "revision", "token", "use_auth_token", "cache_dir",
                  "local_files_only", "force_download", "proxies", "subfolder", "return_unused_kwargs",
                  "device_map", "torch_dtype", "dtype", "quantization_config"}
# model types whose position ids start after the padding id (transformers' create_position_ids_from_input_ids)
PADDING_OFFSET = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "longformer", "data2vec-text",
                  "roberta-prelayernorm"}
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def create_hf_model(path: str, task: str = "sequence-classification", num_classes: int | None = None,
                    vocab_size: int | None = None, max_length: int | None = None, **config_options: Any) -> nn.Module:
    """The transformers model of ``task`` at local ``path``: pretrained from a folder of weights, or randomly
    initialised from a ``config.json`` (then ``vocab_size``, from the data, sizes its embeddings unless an option
    sets it). ``num_classes`` sizes a classifier's head; ``max_length``, the length the data cut texts at
    (``data.max_length``), must fit its positions."""
    if task not in TASKS:
        raise ModelError(f"hf:{path}: unknown task {task!r}; set model.options.task to one of {', '.join(TASKS)}")
    loading = sorted(set(config_options) & LOADER_OPTIONS)
    if loading:
        raise ModelError(f"hf:{path}: {', '.join(loading)} would change how transformers loads, not the model; "
                         f"remove it from model.options (banets reads the local folder only, and runs no code from it)")
    transformers = _transformers(path)
    location = Path(path).expanduser()
    pretrained = location.is_dir() and any((location / name).is_file() for name in WEIGHTS)
    config_file = location / "config.json" if location.is_dir() else location
    if not config_file.is_file() or (location.is_dir() and not pretrained):
        raise ModelError(_not_local(path, location))
    if task != "causal-lm" and num_classes is not None:
        config_options.setdefault("num_labels", num_classes)
    if not pretrained and vocab_size is not None:
        config_options.setdefault("vocab_size", vocab_size)
    config, unused = _built(path, task, lambda: transformers.AutoConfig.from_pretrained(
        str(config_file), return_unused_kwargs=True, **LOCAL, **config_options))
    if unused:
        raise ModelError(f"hf:{path}: its {type(config).__name__} has no field {', '.join(sorted(unused))}; "
                         f"remove it from model.options (the task and config fields go there)")
    check_fits_data(path, task, config, vocab_size, max_length)
    auto = getattr(transformers, TASKS[task])
    if pretrained:
        return _built(path, task, lambda: auto.from_pretrained(str(location), config=config, **LOCAL))
    return _built(path, task, lambda: auto.from_config(config, trust_remote_code=False))


def check_fits_data(path: str, task: str, config: Any, vocab_size: int | None, max_length: int | None) -> None:
    """The data's token ids and text lengths fit the model's embeddings: an id past them, or a text longer than its
    positions, would fail on the first batch that holds one, in the middle of training."""
    positions = usable_positions(config)
    if max_length is not None and positions is not None and max_length > positions:
        raise ModelError(f"hf:{path}: data.max_length={max_length} is more than the model's {positions} positions "
                         f"(max_position_embeddings); set data.max_length={positions}")
    embedded = getattr(config, "vocab_size", None)
    if vocab_size is not None and isinstance(embedded, int) and vocab_size > embedded:
        fix = (f"lower data.max_vocab to {embedded}" if task == "causal-lm" else
               "tokenize with the model's own tokenizer: data.tokenizer=hf:DIR (its tokenizer.json)")
        raise ModelError(f"hf:{path}: the data's vocabulary has {vocab_size} ids but the model embeds {embedded}; "
                         f"{fix}")


def usable_positions(config: Any) -> int | None:
    """The positions a text may take: RoBERTa and its kin number positions from the padding id + 1, so two of
    their ``max_position_embeddings`` (514 for 512) are not a text's."""
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return None
    offset = (config.pad_token_id or 0) + 1 if getattr(config, "model_type", "") in PADDING_OFFSET else 0
    return positions - offset


def _built(path: str, task: str, build: Callable[[], Any]) -> Any:
    """What ``build`` (a transformers loader) returns; its refusal as one line."""
    try:
        return build()
    except (ValueError, RuntimeError, OSError) as error:
        raise ModelError(f"hf:{path}: transformers cannot build a {task} model from it ({first_line(error)}); check "
                         f"the task (model.options.task) and the folder") from None


def _not_local(path: str, location: Path) -> str:
    if location.is_dir() and (location / "config.json").is_file():
        return (f"hf:{path}: the folder holds config.json but no weights ({', '.join(WEIGHTS[::2])}); for random "
                f"weights give the file: model.name=hf:{location / 'config.json'}")
    if location.is_dir():
        return (f"hf:{path}: the folder holds no config.json; give a pretrained folder (save_pretrained's), or the "
                f"path of a config.json for random weights")
    return (f"hf:{path}: no local folder or config.json there, and banets downloads nothing; on a machine with a "
            f"network run `huggingface-cli download {path} --local-dir DIR`, then set model.name=hf:DIR")


def _transformers(path: str) -> Any:
    try:
        import transformers
    except ImportError:
        raise ModelError(f"model 'hf:{path}' needs transformers: pip install \"banets[hf]\" (or transformers "
                         f"beside your PyTorch)") from None
    return transformers
