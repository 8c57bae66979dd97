"""(original SavedModel, compiled SavedModel, inputs) -> parity figures and a pass/fail gate.

Both models run on the same batches: seeded synthetic ones (varied padding, both segment ids)
and, when given, the sentence pairs of a GLUE-format TSV tokenized with the model's vocab.txt.
The gate is the largest absolute probability difference allowed for the precision; a
disagreement in argmax counts against the model only where the original was confident
(its margin is wider than twice the tolerance): near a tie a flip is within tolerance.
"""
from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import tensorflow as tf

from bertc.errors import UserError

# Max |probability difference| per precision. Measured (report in README, "Verify gates"): fp32
# rewrites stay under 2e-6 on tiny to base; fp16 within 2e-3 and bf16 within 1.5e-2 on minilm/MRPC.
GATES = {"fp32": 1e-5, "fp16": 5e-3, "bf16": 3e-2}


@dataclasses.dataclass(frozen=True)
class Batch:
    input_ids: np.ndarray
    input_mask: np.ndarray
    segment_ids: np.ndarray
    labels: np.ndarray | None = None
    source: str = "synthetic"

    def feeds(self) -> dict[str, np.ndarray]:
        return {"input_ids": self.input_ids, "input_mask": self.input_mask, "segment_ids": self.segment_ids}


def synthetic_batches(batches: int, batch_size: int, seq_len: int, vocab: int, seed: int) -> list[Batch]:
    """Seeded batches: [CLS] a [SEP] b [SEP] with random lengths, the rest padding."""
    rng = np.random.default_rng(seed)
    result = []
    for _ in range(batches):
        ids = np.zeros((batch_size, seq_len), np.int32)
        mask = np.zeros_like(ids)
        segments = np.zeros_like(ids)
        for row in range(batch_size):
            length = int(rng.integers(4, seq_len + 1))
            first = int(rng.integers(1, length - 2))
            ids[row, :length] = rng.integers(1000, vocab, length) if vocab > 1000 else rng.integers(1, vocab, length)
            ids[row, 0], ids[row, first], ids[row, length - 1] = min(101, vocab - 1), min(102, vocab - 1), min(102, vocab - 1)
            mask[row, :length] = 1
            segments[row, first + 1:length] = 1
        result.append(Batch(ids, mask, segments))
    return result


# ---- GLUE TSV ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Pair:
    label: int | None
    text_a: str
    text_b: str
    line: int


def read_glue_tsv(path: str | Path, max_examples: int | None = None) -> list[Pair]:
    """The MRPC layout: a header, then `label<TAB>id1<TAB>id2<TAB>sentence1<TAB>sentence2`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"verify.dataset={path} does not exist; give a GLUE-format TSV (MRPC layout).")
    text = path.read_text(encoding="utf-8-sig")  # utf-8-sig drops a BOM
    rows = list(csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows:
        raise UserError(f"{path} is empty; expected a header and rows of label, id1, id2, sentence1, sentence2.")
    pairs = []
    for number, row in enumerate(rows[1:], start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != 5:
            raise UserError(
                f"{path}, line {number}: {len(row)} tab-separated fields, expected 5 (label, id1, id2, "
                "sentence1, sentence2). Check for a stray tab or a missing column."
            )
        label_text, _, _, text_a, text_b = row
        if not text_a.strip() or not text_b.strip():
            raise UserError(f"{path}, line {number}: an empty sentence; every row needs both sentences.")
        label_text = label_text.strip()
        if label_text in ("", "-", "?"):
            label = None
        elif label_text.isdigit():
            label = int(label_text)
        else:
            raise UserError(f"{path}, line {number}: label {label_text!r} is not an integer class.")
        pairs.append(Pair(label, text_a, text_b, number))
        if max_examples is not None and len(pairs) >= max_examples:
            break
    if not pairs:
        raise UserError(f"{path} has a header but no examples.")
    return pairs


def tokenize_pairs(pairs: list[Pair], vocab_file: str | Path, seq_len: int, batch_size: int) -> list[Batch]:
    """WordPiece with the model's vocab (HF tokenizers), [CLS] a [SEP] b [SEP], longest-first truncation."""
    from tokenizers import BertWordPieceTokenizer

    tokenizer = BertWordPieceTokenizer(str(vocab_file), lowercase=True)
    tokenizer.enable_truncation(seq_len, strategy="longest_first")
    tokenizer.enable_padding(length=seq_len)
    encodings = tokenizer.encode_batch([(pair.text_a, pair.text_b) for pair in pairs])
    has_labels = all(pair.label is not None for pair in pairs)
    batches = []
    for start in range(0, len(encodings), batch_size):
        chunk = encodings[start:start + batch_size]
        batches.append(Batch(
            np.array([e.ids for e in chunk], np.int32),
            np.array([e.attention_mask for e in chunk], np.int32),
            np.array([e.type_ids for e in chunk], np.int32),
            np.array([pair.label for pair in pairs[start:start + batch_size]]) if has_labels else None,
            "dataset",
        ))
    return batches


# ---- running both models -----------------------------------------------------------------------

class OriginalModel:
    """The input SavedModel as exported, pruned to (probabilities, logits); extra inputs fed neutral values."""

    def __init__(self, path: Path, signature_inputs: Mapping[str, str], outputs: Mapping[str, str]):
        loaded = tf.saved_model.load(str(path), tags=["serve"])
        self._keys = list(signature_inputs)
        self._function = loaded.prune(
            feeds=[signature_inputs[key] for key in self._keys],
            fetches=[outputs["probabilities"], outputs["logits"]],
        )
        self._loaded = loaded

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = len(feeds["input_ids"])
        arguments = []
        for key in self._keys:
            if key in feeds:
                arguments.append(tf.constant(feeds[key]))
            else:  # label_ids, is_real_example: serving never reads them
                arguments.append(tf.ones([batch], tf.int32) if key == "is_real_example" else tf.zeros([batch], tf.int32))
        probabilities, logits = self._function(*arguments)
        return {"probabilities": probabilities.numpy(), "logits": logits.numpy()}


class CompiledModel:
    def __init__(self, path: Path):
        self._loaded = tf.saved_model.load(str(path))
        self._function = self._loaded.signatures["serving_default"]

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._function(**{key: tf.constant(value) for key, value in feeds.items()})
        return {key: value.numpy() for key, value in outputs.items()}


def compare(original, compiled, batches: Iterable[Batch], gate: str, tolerance: float | None) -> dict:
    tolerance = GATES[gate] if tolerance is None else tolerance
    probs_a, probs_b, logits_a, logits_b, labels, sources = [], [], [], [], [], []
    for batch in batches:
        a, b = original(batch.feeds()), compiled(batch.feeds())
        probs_a.append(a["probabilities"]), probs_b.append(b["probabilities"])
        logits_a.append(a["logits"]), logits_b.append(b["logits"])
        labels.append(batch.labels)
        sources += [batch.source] * len(batch.input_ids)
    pa, pb = np.concatenate(probs_a), np.concatenate(probs_b)
    la, lb = np.concatenate(logits_a), np.concatenate(logits_b)
    prob_diff, logit_diff = np.abs(pa - pb), np.abs(la - lb)
    top_a, top_b = pa.argmax(-1), pb.argmax(-1)
    sorted_a = np.sort(pa, axis=-1)
    margin = sorted_a[:, -1] - sorted_a[:, -2] if pa.shape[1] > 1 else np.ones(len(pa))
    disagree = np.nonzero(top_a != top_b)[0]
    confident = [int(i) for i in disagree if margin[i] > 2 * tolerance]
    result = {
        "examples": int(len(pa)),
        "gate": gate,
        "tolerance": tolerance,
        "max_abs_diff": float(prob_diff.max()),
        "mean_abs_diff": float(prob_diff.mean()),
        "logits_max_abs_diff": float(logit_diff.max()),
        "logits_mean_abs_diff": float(logit_diff.mean()),
        "argmax_agreement": float((top_a == top_b).mean()),
        "disagreements": [
            {"index": int(i), "source": sources[i], "original": pa[i].round(6).tolist(),
             "compiled": pb[i].round(6).tolist(), "confident": int(i) in confident}
            for i in disagree[:20]
        ],
        "confident_disagreements": len(confident),
    }
    dataset_labels = [label for label in labels if label is not None]
    if dataset_labels:
        gold = np.concatenate(dataset_labels)
        rows = np.array([s == "dataset" for s in sources])
        result["accuracy"] = {
            "examples": int(len(gold)),
            "original": float((top_a[rows] == gold).mean()),
            "compiled": float((top_b[rows] == gold).mean()),
        }
    result["passed"] = bool(result["max_abs_diff"] <= tolerance and not confident and np.isfinite(pb).all())
    return result
