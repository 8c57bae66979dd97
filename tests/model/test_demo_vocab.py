"""The random-weight presets (the demo among them) get a generated vocab.txt: verify.dataset runs on them."""

from __future__ import annotations

import io
import json

from rich.console import Console
from support.compile import compose_config
from tokenizers import BertWordPieceTokenizer

from bertc.driver.pipeline import compile_run
from bertc.driver.plan import build_plan
from bertc.model.vocab import SPECIAL_IDS, synthetic_vocab


def test_the_generated_vocab_has_bert_special_ids_and_tokenizes_text(tmp_path):
    tokens = synthetic_vocab(30522)
    assert len(tokens) == len(set(tokens)) == 30522 and tokens == synthetic_vocab(30522)
    assert all(tokens[token_id] == token for token, token_id in SPECIAL_IDS.items())
    (tmp_path / "vocab.txt").write_text("\n".join(tokens) + "\n")
    tokenizer = BertWordPieceTokenizer(str(tmp_path / "vocab.txt"), lowercase=True)
    encoding = tokenizer.encode("He said, 42!", "Naïve café")
    assert encoding.tokens[:6] == ["[CLS]", "h", "##e", "s", "##a", "##i"] and "[SEP]" in encoding.tokens
    assert max(encoding.ids) < 30522 and encoding.ids[0] == 101


def test_a_preset_export_writes_a_vocab_of_its_size(tiny_model_dir):
    lines = (tiny_model_dir / "vocab.txt").read_text().splitlines()
    config = json.loads((tiny_model_dir / "bert_config.json").read_text())
    assert lines == synthetic_vocab(config["vocab_size"])


def test_verify_dataset_runs_on_a_preset(tmp_path):
    dataset = tmp_path / "pairs.tsv"
    dataset.write_text(
        "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        "1\t1\t2\tHe said the pie business doesn't fit.\tThe pie business does not fit our strategy.\n"
        "0\t3\t4\tMagnarelli said Racicot hated the regime.\tHis wife said he was 100 percent behind him.\n"
    )
    cfg = compose_config(["model=tiny", f"verify.dataset={dataset}", "bench=off"])
    code = compile_run(build_plan(cfg), tmp_path / "run", Console(file=io.StringIO()))
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert code == 0, report.get("error")
    assert report["parity"]["by_source"]["dataset"]["examples"] == 2 and report["parity"]["accuracy"]["examples"] == 2
