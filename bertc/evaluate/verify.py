"""(original SavedModel, compiled SavedModel, inputs) -> parity figures and a pass/fail gate.

Both models run on the same batches: seeded synthetic ones (varied padding, both segment ids)
and, when given, the sentence pairs of a GLUE-format TSV tokenized with the model's vocab.txt.
The gate is the largest absolute probability difference allowed for the precision; a
disagreement in argmax counts against the model only where the original was confident
(its margin is wider than twice the tolerance): near a tie a flip is within tolerance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from bertc.errors import ModelError, UserError
from bertc.evaluate.batches import Batch
from bertc.runtime.portable import PARITY_GATES

# Max |probability difference| per precision, set from the largest difference measured over the
# 408 MRPC dev pairs + 32 synthetic rows (2-core CPU, TF 2.21, target tf unless said):
#   python -m bertc verify.dataset=../shared/data/glue_mrpc_dev.tsv model=minilm precision=P bench=off
#   fp32: 0 (bit-identical); with mask.fold_scale=true target=xla 8.9e-7 (logits 3.7e-6): gate ~11x that.
#   mixed (fp16): 8.4e-4, mean 1.8e-4 (logits 4.1e-3), argmax agreement 1.0: gate ~6x.
#   mixed_bf16: 1.45e-2, mean 2.4e-3 (logits 5.6e-2), 1 flip, at a near-tie (margin 3.5e-4): gate ~2x.
# bf16 rounds ~16x coarser than fp16, hence its figure. Measured on 6 layers: a deeper model adds
# error with depth; measure it and set verify.tolerance rather than trust this gate blindly.
GATES = PARITY_GATES  # defined in the runtime, whose self-check applies them with no bertc stage imported
# int8 moves probabilities by far more than any float gate, so its gate is the share of examples whose argmax
# agrees with the original's (on verify.dataset's pairs when given). Set on all-MiniLM-L6-v2's real encoder weights
# over the 408 MRPC dev pairs, target=onnxruntime length=trim, AMD Zen 4 with VNNI (2026-12-03):
#   python -m bertc model=minilm precision=int8 target=onnxruntime verify.dataset=.../glue_mrpc_dev.tsv bench=off
#   dynamic activations: agreement 0.983 (7 flips), max |dp| 0.11, mean 0.017; static: 0.988 (5), 0.041, 0.009.
# MiniLM's head is seeded, not trained: its probabilities sit near 0.5 and every flip was at a margin under 0.21,
# the hardest case for agreement; a trained head's wider margins flip less. A build with its classifier negated
# agrees on about none (tests/targets/test_int8.py). Hence 0.98: below it, measure your model and set
# verify.min_agreement.
AGREEMENT_GATES = {"int8": 0.98}


# ---- GLUE TSV ----------------------------------------------------------------------------------

FIELDS = ("label", "id1", "id2", "sentence1", "sentence2")
NO_LABEL = ("", "-", "?")
UNLABELLED_HEADERS = ("index", "idx", "id")  # GLUE test files: the first column numbers the rows
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


@dataclasses.dataclass(frozen=True)
class Pair:
    label: int | None
    text_a: str
    text_b: str
    line: int


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # utf-8-sig drops a BOM
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise UserError(
            f"{path}, line {line}: not UTF-8 (byte {data[error.start]:#04x}); save the file as UTF-8."
        ) from None


def _parse_label(text: str, path: Path, line: int) -> int | None:
    text = text.strip()
    if text in NO_LABEL:
        return None
    if text.isascii() and text.isdigit():
        return int(text)
    raise UserError(
        f"{path}, line {line}: label {text!r} is not a class number (0, 1, ...); "
        f"the first column of the MRPC layout is the label ({', '.join(NO_LABEL[1:])} or empty for none)."
    )


def read_glue_tsv(path: str | Path, max_examples: int | None = None) -> list[Pair]:
    """The MRPC layout: a header, then `label<TAB>id1<TAB>id2<TAB>sentence1<TAB>sentence2`.

    Fields are split on tabs with no quoting (MRPC sentences have unbalanced `"`), line endings
    are universal (LF, CRLF, CR), blank lines are skipped, and line numbers in errors count every
    line of the file from 1 (the header). A header whose first column is `index` (the GLUE test
    layout) means the file has no labels; otherwise every row has a label or none does.
    """
    path = Path(path)
    _check_readable_file(path)
    if max_examples is not None and max_examples < 1:
        raise UserError(f"verify.max_examples={max_examples}: give a positive number, or null for the whole file.")
    # NOTE: not str.splitlines(): it also breaks at \x0b, \x1c-\x1e, \x85 and \u2028, which can sit in a sentence.
    lines = _read_text(path).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    numbered = [(number, line.split("\t")) for number, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise UserError(f"{path} is empty; expected a header and rows of {', '.join(FIELDS)}.")
    header_line, header = numbered[0]
    if len(header) == len(FIELDS) and header[0].strip().isdigit() and header[1].strip().isdigit():
        raise UserError(
            f"{path}, line {header_line}: this looks like an example, not a header; the MRPC layout starts "
            "with a header line (e.g. `Quality<TAB>#1 ID<TAB>#2 ID<TAB>#1 String<TAB>#2 String`). Add one."
        )
    labelled = header[0].strip().lower() not in UNLABELLED_HEADERS
    pairs: list[Pair] = []
    for number, row in numbered[1:]:
        if len(row) != len(FIELDS):
            raise UserError(
                f"{path}, line {number}: {len(row)} tab-separated field{'s' if len(row) != 1 else ''}, "
                f"expected {len(FIELDS)} ({', '.join(FIELDS)}). Check for a stray or missing tab."
            )
        label_text, _, _, text_a, text_b = row
        label = _parse_label(label_text, path, number) if labelled else None
        if pairs and (label is None) != (pairs[0].label is None):
            with_label, without = (pairs[0].line, number) if label is None else (number, pairs[0].line)
            raise UserError(
                f"{path}, line {without} has no label but line {with_label} has one; label every row or none."
            )
        pairs.append(Pair(label, text_a, text_b, number))
        if max_examples is not None and len(pairs) >= max_examples:
            break
    if not pairs:
        raise UserError(f"{path} has a header but no examples.")
    return pairs


def _check_readable_file(path: Path) -> None:
    if not path.exists():
        raise UserError(f"verify.dataset={path} does not exist; give a GLUE-format TSV (MRPC layout).")
    if path.is_dir():
        raise UserError(f"verify.dataset={path} is a folder; give the TSV file in it (e.g. {path}/dev.tsv).")
    try:
        with open(path, "rb") as stream:
            stream.read(1)
    except OSError as error:
        raise UserError(
            f"verify.dataset={path} cannot be read ({error.strerror or error}); check its permissions."
        ) from None


def check_verify_inputs(verify, model_path: Path, vocab_rows: int) -> None:
    """Before compiling: the dataset is a readable file, and the model's vocab.txt fits its embeddings."""
    if not verify.dataset:
        return
    _check_readable_file(Path(verify.dataset))
    vocab = Path(model_path) / "vocab.txt"
    if not vocab.is_file():
        raise UserError(f"verify.dataset needs the model's vocab.txt, and {model_path} has none.")
    data = vocab.read_bytes()
    tokens = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    if tokens > vocab_rows:
        raise ModelError(
            f"{vocab} has {tokens} tokens but the model's word-embedding table has {vocab_rows} rows: ids "
            f"from {vocab_rows} up would index past the table. The vocab.txt belongs to another model; use "
            "the one the model was trained with."
        )


def _vocab_is_cased(vocab_file: Path) -> bool:
    """Cased vocabularies (google's cased_L-*) hold upper-case pieces; uncased ones only [CLS]-style specials."""
    with open(vocab_file, encoding="utf-8") as stream:
        tokens = [line.strip() for line in stream]
    return any(token != token.lower() for token in tokens if not token.startswith("["))


def tokenize_pairs(
    pairs: list[Pair], vocab_file: str | Path, seq_len: int, batch_size: int, lowercase: bool | None = None
) -> list[Batch]:
    """WordPiece with the model's vocab (HF tokenizers), [CLS] a [SEP] b [SEP], longest-first truncation.

    `lowercase=None` follows the vocabulary: lower-case (and strip accents) unless it has upper-case pieces.
    """
    from tokenizers import BertWordPieceTokenizer

    vocab_file = Path(vocab_file)
    if not vocab_file.is_file():
        raise UserError(f"{vocab_file} does not exist; verify.dataset needs the model's vocab.txt.")
    if lowercase is None:
        lowercase = not _vocab_is_cased(vocab_file)
    try:
        tokenizer = BertWordPieceTokenizer(str(vocab_file), lowercase=lowercase)
    except TypeError as error:  # tokenizers' words for a missing [CLS] / [SEP]
        raise UserError(f"{vocab_file}: {error}; a BERT vocab.txt has {', '.join(SPECIAL_TOKENS)}.") from None
    missing = [token for token in SPECIAL_TOKENS if tokenizer.token_to_id(token) is None]
    if missing:
        raise UserError(f"{vocab_file} has no {', '.join(missing)}; a BERT vocab.txt has {', '.join(SPECIAL_TOKENS)}.")
    pad_id = tokenizer.token_to_id("[PAD]")
    tokenizer.enable_truncation(seq_len, strategy="longest_first")
    tokenizer.enable_padding(length=seq_len, pad_id=pad_id, pad_token="[PAD]")
    encodings = tokenizer.encode_batch([(pair.text_a, pair.text_b) for pair in pairs])
    has_labels = all(pair.label is not None for pair in pairs)
    batches = []
    for start in range(0, len(encodings), batch_size):
        chunk, chunk_pairs = encodings[start : start + batch_size], pairs[start : start + batch_size]
        batches.append(
            Batch(
                np.array([e.ids for e in chunk], np.int32),
                np.array([e.attention_mask for e in chunk], np.int32),
                np.array([e.type_ids for e in chunk], np.int32),
                np.array([pair.label for pair in chunk_pairs], np.int64) if has_labels else None,
                "dataset",
                np.array([pair.line for pair in chunk_pairs], np.int64),
            )
        )
    return batches


# ---- running both models -----------------------------------------------------------------------


class OriginalModel:
    """The input SavedModel as exported, fed under its own input names; extra inputs fed neutral values.

    Its dialect's frontend says how it is called (bertc.frontends: `calls_signature`): a TF2 model's
    serving signature as it is, a TF1 graph pruned to the tensors bertc compiled as (probabilities,
    logits). An original that outputs logits only gets its probabilities by a softmax here, as the
    compiled model does (bertc.frontends.signature).
    """

    def __init__(
        self,
        path: Path,
        signature_inputs: Mapping[str, str],
        outputs: Mapping[str, str],
        served=None,
        dialect: str = "tf1",
    ):
        import tensorflow as tf

        from bertc import frontends

        loaded = tf.saved_model.load(str(path), tags=["serve"])
        self._keys = list(signature_inputs)
        self._names = dict(served.input_names) if served is not None else {}
        self._kind = served.output_kind if served is not None else "probabilities"
        self._loaded = loaded
        if frontends.get(dialect).calls_signature:
            self._signature, self._output = loaded.signatures["serving_default"], served.output_key
            return
        self._signature = None
        wanted = [outputs["logits"]] if self._kind == "logits" else [outputs["probabilities"], outputs["logits"]]
        self._function = loaded.prune(feeds=[signature_inputs[key] for key in self._keys], fetches=wanted)

    def _arguments(self, feeds: Mapping[str, np.ndarray]) -> dict:
        import tensorflow as tf

        batch = len(feeds["input_ids"])
        by_key = {self._names.get(name, name): value for name, value in feeds.items()}
        arguments = {}
        for key in self._keys:
            if key in by_key:
                arguments[key] = tf.constant(by_key[key])
            else:  # label_ids, is_real_example: serving never reads them
                neutral = tf.ones if key == "is_real_example" else tf.zeros
                arguments[key] = neutral([batch], tf.int32)
        return arguments

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arguments = self._arguments(feeds)
        if self._signature is not None:
            values = [self._signature(**arguments)[self._output]]
        else:
            values = self._function(*[arguments[key] for key in self._keys])
        if self._kind == "probabilities" and len(values) == 2:
            return {"probabilities": values[0].numpy(), "logits": values[1].numpy()}
        if self._kind == "logits":
            logits = values[0].numpy()
            shifted = np.exp(logits - logits.max(-1, keepdims=True))
            return {"probabilities": shifted / shifted.sum(-1, keepdims=True), "logits": logits}
        # A TF2 signature that outputs probabilities only: its logits are inside the function.
        probabilities = values[0].numpy()
        return {"probabilities": probabilities, "logits": np.log(np.maximum(probabilities, 1e-30))}


LISTED_DISAGREEMENTS = 20  # report.json lists at most this many, confident ones first


def _figures(pa: np.ndarray, pb: np.ndarray, la: np.ndarray, lb: np.ndarray) -> dict:
    prob_diff, logit_diff = np.abs(pa - pb), np.abs(la - lb)
    return {
        "examples": len(pa),
        "max_abs_diff": float(prob_diff.max()),
        "mean_abs_diff": float(prob_diff.mean()),
        "logits_max_abs_diff": float(logit_diff.max()),
        "logits_mean_abs_diff": float(logit_diff.mean()),
        "argmax_agreement": float((pa.argmax(-1) == pb.argmax(-1)).mean()),
        "disagreement_count": int((pa.argmax(-1) != pb.argmax(-1)).sum()),
    }


@dataclasses.dataclass
class _Outputs:
    """Both models' outputs over all batches, as float64 [examples, classes], and where each example came from."""

    pa: np.ndarray  # probabilities: original, compiled
    pb: np.ndarray
    la: np.ndarray  # logits: original, compiled
    lb: np.ndarray
    labels: list[np.ndarray]  # the labelled batches' labels, in order
    sources: list[str]
    lines: list[int | None]


def _run_both(original, compiled, batches: Iterable[Batch]) -> _Outputs:
    probs_a, probs_b, logits_a, logits_b, labels, sources = [], [], [], [], [], []
    lines: list[int | None] = []
    for batch in batches:
        a, b = original(batch.feeds()), compiled(batch.feeds())
        probs_a.append(a["probabilities"])
        probs_b.append(b["probabilities"])
        logits_a.append(a["logits"])
        logits_b.append(b["logits"])
        if batch.labels is not None:
            labels.append(batch.labels)
        sources += [batch.source] * len(batch.input_ids)
        lines += batch.lines.tolist() if batch.lines is not None else [None] * len(batch.input_ids)
    if not probs_a:
        raise UserError("nothing to verify: no batches (verify.batches is 0 and no verify.dataset).")
    pa, pb = np.concatenate(probs_a).astype(np.float64), np.concatenate(probs_b).astype(np.float64)
    la, lb = np.concatenate(logits_a).astype(np.float64), np.concatenate(logits_b).astype(np.float64)
    return _Outputs(pa, pb, la, lb, labels, sources, lines)


def compare(
    original, compiled, batches: Iterable[Batch], gate: str, tolerance: float | None, min_agreement: float | None = None
) -> dict:
    """Run both models on every batch; the figures over all examples, per source, and the gate's verdict.

    `original` and `compiled` map feeds to {"probabilities", "logits"} (numpy, [batch, classes]). The float gates
    bound max |dp|; int8's (AGREEMENT_GATES) bounds the share of argmax disagreements instead.
    """
    if gate in AGREEMENT_GATES:
        return _agreement_gate(_run_both(original, compiled, batches), gate, min_agreement)
    tolerance = GATES[gate] if tolerance is None else tolerance
    out = _run_both(original, compiled, batches)
    listed, confident = _disagreements(out, tolerance)
    result = {"gate": gate, "tolerance": tolerance, **_summary(out), "confident_disagreements": len(confident)}
    result["disagreements"] = listed
    result["passed"] = bool(result["max_abs_diff"] <= tolerance and not confident and result["nonfinite_outputs"] == 0)
    return result


def _summary(out: _Outputs) -> dict:
    """The figures over all examples and per source, non-finite outputs, and both accuracies where labelled."""
    pa, pb, la, lb = out.pa, out.pb, out.la, out.lb
    source_names = np.array(out.sources)
    result = {
        **_figures(pa, pb, la, lb),
        "nonfinite_outputs": int(((~np.isfinite(pb)).any(-1) | (~np.isfinite(lb)).any(-1)).sum()),  # examples
        "by_source": {},
    }
    for name in dict.fromkeys(out.sources):  # synthetic, dataset: in the order they ran
        rows = source_names == name
        result["by_source"][name] = _figures(pa[rows], pb[rows], la[rows], lb[rows])
    if out.labels:
        result["accuracy"] = _accuracy(np.concatenate(out.labels), pa, pb, source_names == "dataset")
    return result


def _agreement_gate(out: _Outputs, gate: str, min_agreement: float | None) -> dict:
    """int8: passed when the argmax agrees with the original's on at least `min_agreement` of the examples, on the
    dataset's when there are any (real sentences; random tokens say little about a quantized model)."""
    threshold = AGREEMENT_GATES[gate] if min_agreement is None else min_agreement
    result = {"gate": gate, "tolerance": None, "min_agreement": threshold, **_summary(out)}
    measured_on = "dataset" if "dataset" in result["by_source"] else "all"
    agreement = result["by_source"].get(measured_on, result)["argmax_agreement"]
    result["disagreements"], _ = _disagreements(out, 0.0)
    result["confident_disagreements"] = result["disagreement_count"]
    result.update(agreement_on=measured_on, gated_agreement=agreement)
    result["passed"] = bool(agreement >= threshold and result["nonfinite_outputs"] == 0)
    return result


def _disagreements(out: _Outputs, tolerance: float) -> tuple[list[dict], list[int]]:
    """The examples whose argmax differs, widest margin first (at most LISTED_DISAGREEMENTS), and the indices
    of those where the original was confident: its margin wider than twice the tolerance."""
    pa, pb = out.pa, out.pb
    sorted_a = np.sort(pa, axis=-1)
    margin = sorted_a[:, -1] - sorted_a[:, -2] if pa.shape[1] > 1 else np.ones(len(pa))
    disagree = np.nonzero(pa.argmax(-1) != pb.argmax(-1))[0]
    confident = [int(i) for i in disagree if margin[i] > 2 * tolerance]
    listed = sorted(disagree.tolist(), key=lambda i: -margin[i])[:LISTED_DISAGREEMENTS]
    records = [
        {
            "index": i,
            "source": out.sources[i],
            **({"line": out.lines[i]} if out.lines[i] is not None else {}),
            "original": pa[i].round(6).tolist(),
            "compiled": pb[i].round(6).tolist(),
            "margin": round(float(margin[i]), 6),
            "confident": i in confident,
        }
        for i in listed
    ]
    return records, confident


def _accuracy(gold: np.ndarray, pa: np.ndarray, pb: np.ndarray, rows: np.ndarray) -> dict:
    """Both models' accuracy on the dataset examples (`rows`) against their labels."""
    if len(gold) != rows.sum():
        raise ValueError(
            f"{len(gold)} labels for {int(rows.sum())} dataset examples: batches must all carry labels or none"
        )
    if gold.max() >= pa.shape[1]:
        raise UserError(
            f"the dataset has label {int(gold.max())}, but the model has {pa.shape[1]} classes "
            f"(0 to {pa.shape[1] - 1}); "
            "give a dataset for this model's task."
        )
    return {
        "examples": len(gold),
        "original": float((pa.argmax(-1)[rows] == gold).mean()),
        "compiled": float((pb.argmax(-1)[rows] == gold).mean()),
    }
