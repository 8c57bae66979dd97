"""Verify's inputs and verdict without TensorFlow: the GLUE TSV reader on the MRPC layout and its odd
lines, the WordPiece tokenization of pairs, and `compare` with stand-in models (a perturbed one, a
near-tie flip, labels and no labels)."""

from __future__ import annotations

import numpy as np
import pytest

from bertc.errors import UserError
from bertc.evaluate.batches import Batch, synthetic_batches
from bertc.evaluate.verify import GATES, Pair, compare, read_glue_tsv, tokenize_pairs

HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat", "sat", "on", "mat", "##s", '"', ".", "a", "dog", "ran"]
ID = {token: index for index, token in enumerate(VOCAB)}
PAD, UNK, CLS, SEP = ID["[PAD]"], ID["[UNK]"], ID["[CLS]"], ID["[SEP]"]


def write_tsv(tmp_path, text: str, encoding: str = "utf-8", name: str = "dev.tsv"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


@pytest.fixture
def vocab_file(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return path


# ---- the TSV reader ----------------------------------------------------------------------------


def test_reads_the_mrpc_layout(tmp_path):
    path = write_tsv(
        tmp_path, f"{HEADER}\n1\t11\t12\tThe cat sat .\tA cat sat .\n0\t21\t22\tThe dog ran .\tThe mat .\n"
    )
    pairs = read_glue_tsv(path)
    assert pairs == [Pair(1, "The cat sat .", "A cat sat .", 2), Pair(0, "The dog ran .", "The mat .", 3)]


def test_the_real_mrpc_dev_layout_and_its_unbalanced_quotes(tmp_path):
    """Two lines in the shape of MRPC dev (BOM, a sentence opening with a lone quote, another with a quoted span)."""
    text = (
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        "1\t1355540\t1355592\tHe said the pie business doesn 't fit .\t\" The pie business does not fit .\n"
        '0\t2029631\t2029565\tHe hated the regime .\tHis wife said he was " 100 percent behind " and more .\n'
    )
    pairs = read_glue_tsv(write_tsv(tmp_path, text))
    assert [pair.label for pair in pairs] == [1, 0]
    assert pairs[0].text_b == '" The pie business does not fit .'
    assert pairs[1].text_b == 'His wife said he was " 100 percent behind " and more .'


def test_a_lone_double_quote_survives_reading_and_tokenizing(tmp_path, vocab_file):
    path = write_tsv(tmp_path, f'{HEADER}\n1\t1\t2\tthe cat " sat\tthe mat\n0\t3\t4\tthe dog\t" the cat\n')
    pairs = read_glue_tsv(path)
    assert pairs[0].text_a == 'the cat " sat' and pairs[1].text_b == '" the cat'
    [batch] = tokenize_pairs(pairs, vocab_file, seq_len=12, batch_size=8)
    assert batch.input_ids[0, :6].tolist() == [CLS, ID["the"], ID["cat"], ID['"'], ID["sat"], SEP]
    assert batch.input_ids[1, :7].tolist() == [CLS, ID["the"], ID["dog"], SEP, ID['"'], ID["the"], ID["cat"]]


def test_empty_fields_are_read(tmp_path, vocab_file):
    """Ids are not used and may be empty; an empty sentence is still a pair: [CLS] [SEP] b [SEP]."""
    path = write_tsv(tmp_path, f"{HEADER}\n1\t\t\tthe cat\tthe dog\n0\t5\t6\t\tthe mat\n")
    pairs = read_glue_tsv(path)
    assert pairs[0] == Pair(1, "the cat", "the dog", 2) and pairs[1] == Pair(0, "", "the mat", 3)
    [batch] = tokenize_pairs(pairs, vocab_file, seq_len=8, batch_size=8)
    assert batch.input_ids[1].tolist() == [CLS, SEP, ID["the"], ID["mat"], SEP, PAD, PAD, PAD]
    assert batch.segment_ids[1].tolist() == [0, 0, 1, 1, 1, 0, 0, 0]


def test_a_bom_is_dropped(tmp_path):
    plain = write_tsv(tmp_path, f"{HEADER}\n1\t1\t2\tthe cat\tthe dog\n", name="plain.tsv")
    with_bom = write_tsv(tmp_path, f"{HEADER}\n1\t1\t2\tthe cat\tthe dog\n", encoding="utf-8-sig", name="bom.tsv")
    assert with_bom.read_bytes()[:3] == b"\xef\xbb\xbf"
    assert read_glue_tsv(with_bom) == read_glue_tsv(plain)


def test_blank_lines_and_crlf_endings(tmp_path):
    text = f"{HEADER}\r\n\r\n1\t1\t2\tthe cat\tthe dog\r\n   \r\n0\t3\t4\tthe mat\tthe cat\r\n\r\n"
    pairs = read_glue_tsv(write_tsv(tmp_path, text))
    assert [(pair.label, pair.text_a, pair.text_b, pair.line) for pair in pairs] == [
        (1, "the cat", "the dog", 3),
        (0, "the mat", "the cat", 5),
    ]
    assert not any("\r" in pair.text_b for pair in pairs)


def test_unicode_line_separators_inside_a_sentence_do_not_split_the_row(tmp_path):
    """str.splitlines() would break these rows in two (and miscount every line after them)."""
    text = f"{HEADER}\n1\t1\t2\tthe cat\u2028sat\tthe\x85dog\n0\t3\t4\tthe mat\tthe\x1ccat\n"
    pairs = read_glue_tsv(write_tsv(tmp_path, text))
    assert [pair.line for pair in pairs] == [2, 3]
    assert pairs[0].text_a == "the cat\u2028sat" and pairs[0].text_b == "the\x85dog"


@pytest.mark.parametrize(
    "row, fields",
    [
        ("1\t1\t2\tthe cat", 4),
        ("1\t1\t2\tthe cat\tthe dog\textra", 6),
        ("1 1 2 the cat the dog", 1),
    ],
)
def test_a_row_with_the_wrong_number_of_fields_names_its_line(tmp_path, row, fields):
    path = write_tsv(tmp_path, f"{HEADER}\n1\t1\t2\tthe cat\tthe dog\n\n{row}\n")
    with pytest.raises(UserError, match=rf"line 4: {fields} tab-separated fields?, expected 5 \(label, id1"):
        read_glue_tsv(path)


@pytest.mark.parametrize("label", ["yes", "1.0", "-1", "²"])
def test_a_label_that_is_not_a_class_number_names_its_line(tmp_path, label):
    path = write_tsv(tmp_path, f"{HEADER}\n1\t1\t2\tthe cat\tthe dog\n{label}\t3\t4\tthe mat\tthe cat\n")
    with pytest.raises(UserError, match=rf"line 3: label '{label}' is not a class number"):
        read_glue_tsv(path)


def test_the_unlabelled_test_layout(tmp_path, vocab_file):
    """GLUE's MRPC test.tsv: the first column is a row index, not a label."""
    path = write_tsv(
        tmp_path, "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\tthe cat\tthe dog\n1\t3\t4\tthe mat\ta cat\n"
    )
    pairs = read_glue_tsv(path)
    assert [pair.label for pair in pairs] == [None, None]
    batches = tokenize_pairs(pairs, vocab_file, seq_len=8, batch_size=8)
    assert all(batch.labels is None for batch in batches)
    parity = compare(StandIn(), StandIn(), batches, "fp32", None)
    assert "accuracy" not in parity and parity["passed"]


def test_rows_without_labels_read_as_unlabelled(tmp_path):
    path = write_tsv(tmp_path, f"{HEADER}\n-\t1\t2\tthe cat\tthe dog\n\t3\t4\tthe mat\ta cat\n")
    assert [pair.label for pair in read_glue_tsv(path)] == [None, None]


def test_a_file_that_labels_only_some_rows_is_refused(tmp_path):
    path = write_tsv(tmp_path, f"{HEADER}\n1\t1\t2\tthe cat\tthe dog\n\t3\t4\tthe mat\ta cat\n")
    with pytest.raises(UserError, match="line 3 has no label but line 2 has one"):
        read_glue_tsv(path)


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "is empty"),
        ("\n\n", "is empty"),
        (f"{HEADER}\n\n", "has a header but no examples"),
        ("1\t1\t2\tthe cat\tthe dog\n", "line 1: this looks like an example, not a header"),
    ],
)
def test_files_without_examples_or_header_are_refused(tmp_path, text, words):
    with pytest.raises(UserError, match=words):
        read_glue_tsv(write_tsv(tmp_path, text))


def test_a_missing_or_non_utf8_file_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_glue_tsv(tmp_path / "nowhere.tsv")
    path = tmp_path / "latin1.tsv"
    path.write_bytes(f"{HEADER}\n1\t1\t2\tthe cat\tthe dog\n0\t3\t4\tcaf\xe9\tthe cat\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"line 3: not UTF-8 \(byte 0xe9\)"):
        read_glue_tsv(path)


def test_max_examples(tmp_path):
    rows = "".join(f"{i % 2}\t{i}\t{i}\tthe cat\tthe dog\n" for i in range(10))
    path = write_tsv(tmp_path, f"{HEADER}\n{rows}")
    assert len(read_glue_tsv(path, max_examples=3)) == 3
    with pytest.raises(UserError, match="verify.max_examples=0"):
        read_glue_tsv(path, max_examples=0)


# ---- tokenization ------------------------------------------------------------------------------


def test_tokens_segments_and_mask(vocab_file):
    pairs = [Pair(1, "The cats sat.", "a dog", 2)]
    [batch] = tokenize_pairs(pairs, vocab_file, seq_len=12, batch_size=8)
    expected = [CLS, ID["the"], ID["cat"], ID["##s"], ID["sat"], ID["."], SEP, ID["a"], ID["dog"], SEP, PAD, PAD]
    assert batch.input_ids.tolist() == [expected]
    assert batch.segment_ids.tolist() == [[0] * 7 + [1] * 3 + [0] * 2]
    assert batch.input_mask.tolist() == [[1] * 10 + [0] * 2]
    assert batch.input_ids.dtype == batch.input_mask.dtype == batch.segment_ids.dtype == np.int32
    assert batch.labels.tolist() == [1] and batch.lines.tolist() == [2] and batch.source == "dataset"


def test_unknown_words_become_unk(vocab_file):
    [batch] = tokenize_pairs([Pair(0, "the zebra", "cat", 2)], vocab_file, seq_len=8, batch_size=1)
    assert batch.input_ids[0, :6].tolist() == [CLS, ID["the"], UNK, SEP, ID["cat"], SEP]


def test_truncation_to_seq_len_trims_the_longer_sentence_first(vocab_file):
    long_a, short_b = " ".join(["cat"] * 40), "the dog"
    [batch] = tokenize_pairs(
        [Pair(0, long_a, short_b, 2), Pair(1, long_a, long_a, 3)], vocab_file, seq_len=16, batch_size=8
    )
    assert batch.input_ids.shape == (2, 16)
    first = batch.input_ids[0].tolist()
    assert first == [CLS] + [ID["cat"]] * 11 + [SEP, ID["the"], ID["dog"], SEP]
    assert batch.input_mask.tolist() == [[1] * 16] * 2
    assert batch.segment_ids[0].tolist() == [0] * 13 + [1] * 3
    second = batch.input_ids[1].tolist()
    assert second[0] == CLS and second[-1] == SEP and second.count(SEP) == 2
    assert batch.segment_ids[1].tolist() == [0] * 8 + [1] * 8  # both long: split evenly (6 + 7 pieces)


def test_batches_follow_batch_size_and_carry_labels_and_lines(vocab_file):
    pairs = [Pair(i % 2, "the cat", "the dog", i + 2) for i in range(5)]
    batches = tokenize_pairs(pairs, vocab_file, seq_len=8, batch_size=2)
    assert [len(batch.input_ids) for batch in batches] == [2, 2, 1]
    assert np.concatenate([batch.labels for batch in batches]).tolist() == [0, 1, 0, 1, 0]
    assert np.concatenate([batch.lines for batch in batches]).tolist() == [2, 3, 4, 5, 6]


def test_padding_uses_the_vocab_pad_id_wherever_it_is(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[UNK]\n[CLS]\n[SEP]\nthe\ncat\n[PAD]\n")
    [batch] = tokenize_pairs([Pair(0, "the", "cat", 2)], path, seq_len=7, batch_size=1)
    assert batch.input_ids.tolist() == [[1, 3, 2, 4, 2, 5, 5]]


def test_lower_casing_follows_the_vocabulary(tmp_path, vocab_file):
    [uncased] = tokenize_pairs([Pair(0, "The CAT", "Dog", 2)], vocab_file, seq_len=8, batch_size=1)
    assert uncased.input_ids[0, :6].tolist() == [CLS, ID["the"], ID["cat"], SEP, ID["dog"], SEP]
    cased = tmp_path / "cased.txt"
    cased.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nThe\nthe\nDog\ndog\n")
    [batch] = tokenize_pairs([Pair(0, "The the", "Dog", 2)], cased, seq_len=8, batch_size=1)
    assert batch.input_ids[0, :6].tolist() == [2, 4, 5, 3, 6, 3]


def test_a_vocab_without_special_tokens_is_a_clear_error(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n[UNK]\n[CLS]\nthe\n")
    with pytest.raises(UserError, match=r"\[SEP\]"):
        tokenize_pairs([Pair(0, "the", "the", 2)], path, seq_len=8, batch_size=1)
    with pytest.raises(UserError, match="does not exist"):
        tokenize_pairs([Pair(0, "the", "the", 2)], tmp_path / "none.txt", seq_len=8, batch_size=1)


# ---- compare -----------------------------------------------------------------------------------


class StandIn:
    """A two-class bag-of-embeddings classifier in numpy: logits = mean of embedding[ids] over the mask."""

    def __init__(self, seed: int = 0, vocab: int = 2000, perturb: float = 0.0):
        rng = np.random.default_rng(seed)
        self.embedding = rng.normal(0, 1, (vocab, 2)).astype(np.float32)
        self.embedding[:, 1] += perturb  # a broken rewrite: one class's weights shifted

    def __call__(self, feeds):
        mask = feeds["input_mask"][..., None].astype(np.float32)
        logits = (self.embedding[feeds["input_ids"]] * mask).sum(1) / mask.sum(1)
        logits += 0.1 * feeds["segment_ids"].mean(1, keepdims=True)
        exp = np.exp(logits - logits.max(-1, keepdims=True))
        return {"probabilities": exp / exp.sum(-1, keepdims=True), "logits": logits}


class Fixed:
    """The same probabilities for every example."""

    def __init__(self, probabilities):
        self.probabilities = np.array([probabilities], np.float32)

    def __call__(self, feeds):
        probabilities = np.repeat(self.probabilities, len(feeds["input_ids"]), axis=0)
        with np.errstate(invalid="ignore"):
            return {"probabilities": probabilities, "logits": np.log(probabilities)}


def synthetic(batches: int = 3):
    return synthetic_batches(batches, 8, 32, 2000, seed=0)


def one_row(labels=None, source="dataset"):
    ids = np.array([[2, 5, 3, 6, 3]], np.int32)
    return Batch(
        ids,
        np.ones_like(ids),
        np.array([[0, 0, 0, 1, 1]], np.int32),
        labels,
        source,
        np.array([7]) if source == "dataset" else None,
    )


def test_identical_models_pass_with_zero_difference():
    parity = compare(StandIn(), StandIn(), synthetic(), "fp32", None)
    assert parity["passed"] and parity["examples"] == 24 and parity["tolerance"] == GATES["fp32"]
    assert parity["max_abs_diff"] == parity["logits_max_abs_diff"] == 0.0
    assert parity["argmax_agreement"] == 1.0 and parity["disagreement_count"] == 0 and parity["disagreements"] == []
    assert "accuracy" not in parity and set(parity["by_source"]) == {"synthetic"}


def test_a_perturbed_model_fails_the_gate():
    parity = compare(StandIn(), StandIn(perturb=0.2), synthetic(), "bf16", None)
    assert not parity["passed"]
    assert parity["max_abs_diff"] > GATES["bf16"] and parity["logits_max_abs_diff"] > parity["max_abs_diff"]


def test_a_small_perturbation_passes_a_loose_gate_and_fails_a_tight_one():
    loose = compare(StandIn(), StandIn(perturb=1e-3), synthetic(), "bf16", None)
    tight = compare(StandIn(), StandIn(perturb=1e-3), synthetic(), "fp32", None)
    assert loose["passed"] and not tight["passed"]
    assert loose["max_abs_diff"] == tight["max_abs_diff"] > GATES["fp32"]
    assert compare(StandIn(), StandIn(perturb=1e-3), synthetic(), "fp32", tolerance=0.1)["passed"]


def test_an_argmax_flip_on_a_near_tie_is_not_confident():
    """The original's margin (0.002) is under twice the tolerance: the flip is within what the gate allows."""
    parity = compare(Fixed([0.501, 0.499]), Fixed([0.4995, 0.5005]), [one_row()], "fp16", None)
    assert parity["disagreement_count"] == 1 and parity["argmax_agreement"] == 0.0
    assert parity["confident_disagreements"] == 0 and parity["passed"]
    [entry] = parity["disagreements"]
    assert entry["confident"] is False and entry["line"] == 7 and entry["source"] == "dataset"
    assert entry["margin"] == pytest.approx(0.002, abs=1e-6)


def test_an_argmax_flip_on_a_confident_example_counts_as_confident_and_fails():
    parity = compare(Fixed([0.7, 0.3]), Fixed([0.3, 0.7]), [one_row()], "fp16", tolerance=0.1)
    assert parity["confident_disagreements"] == 1 and parity["disagreements"][0]["confident"] is True
    assert not parity["passed"]


def test_accuracy_side_by_side_when_labels_exist():
    batches = synthetic(2) + [one_row(np.array([1])), one_row(np.array([1])), one_row(np.array([0]))]
    parity = compare(Fixed([0.2, 0.8]), Fixed([0.6, 0.4]), batches, "bf16", tolerance=1.0)
    assert parity["accuracy"] == {"examples": 3, "original": pytest.approx(2 / 3), "compiled": pytest.approx(1 / 3)}
    assert parity["by_source"]["synthetic"]["examples"] == 16 and parity["by_source"]["dataset"]["examples"] == 3
    same = compare(Fixed([0.2, 0.8]), Fixed([0.2, 0.8]), [one_row(np.array([1])), one_row(np.array([1]))], "bf16", None)
    assert same["accuracy"] == {"examples": 2, "original": 1.0, "compiled": 1.0}


def test_compare_on_tokenized_pairs_reports_accuracy_and_lines(tmp_path, vocab_file):
    rows = "".join(f"{i % 2}\t{i}\t{i}\tthe cat sat\tthe dog ran .\n" for i in range(6))
    pairs = read_glue_tsv(write_tsv(tmp_path, f"{HEADER}\n{rows}"))
    batches = tokenize_pairs(pairs, vocab_file, seq_len=16, batch_size=4)
    parity = compare(StandIn(vocab=len(VOCAB)), StandIn(vocab=len(VOCAB)), batches, "fp32", None)
    assert parity["passed"] and parity["accuracy"]["examples"] == 6
    assert parity["accuracy"]["original"] == parity["accuracy"]["compiled"] == 0.5  # same input, alternating labels


def test_nonfinite_outputs_fail_the_gate():
    parity = compare(Fixed([0.6, 0.4]), Fixed([np.nan, np.nan]), [one_row()], "fp32", None)
    assert not parity["passed"] and parity["nonfinite_outputs"] == 1


def test_a_label_beyond_the_models_classes_is_a_clear_error():
    with pytest.raises(UserError, match="label 2, but the model has 2 classes"):
        compare(Fixed([0.6, 0.4]), Fixed([0.6, 0.4]), [one_row(np.array([2]))], "fp32", None)


def test_nothing_to_compare_is_a_clear_error():
    with pytest.raises(UserError, match="nothing to verify"):
        compare(Fixed([0.6, 0.4]), Fixed([0.6, 0.4]), [], "fp32", None)


def test_disagreements_are_counted_in_full_and_listed_confident_first():
    parity = compare(StandIn(seed=0), StandIn(seed=1), synthetic(8), "fp32", None)
    count = parity["disagreement_count"]
    assert count > 20 and len(parity["disagreements"]) == 20
    assert parity["argmax_agreement"] == pytest.approx(1 - count / 64)
    margins = [entry["margin"] for entry in parity["disagreements"]]
    assert margins == sorted(margins, reverse=True)
