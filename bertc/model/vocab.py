"""A vocabulary size -> a deterministic WordPiece vocab.txt for the random-weight presets (no real one ships).

The special tokens sit at google-research BERT's uncased ids ([PAD] 0, [UNK] 100, [CLS] 101, [SEP]
102, [MASK] 103, [unused0..98] between), then every lower-case ASCII letter, digit and punctuation
mark, alone and as a `##` continuation, so WordPiece splits any ASCII text into characters (other
characters become [UNK]); `[unusedN]` fills the rest up to the model's vocabulary size. With it
`verify.dataset=...` tokenizes real sentence pairs for the demo model: the parity figures compare
original and compiled on real lengths and padding, while the accuracy of random weights means nothing.
"""

from __future__ import annotations

import string
from pathlib import Path

SPECIAL_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
CHARACTERS = string.ascii_lowercase + string.digits + string.punctuation


def synthetic_vocab(size: int) -> list[str]:
    """`size` tokens, the same for the same size."""
    pieces = [*CHARACTERS, *(f"##{character}" for character in CHARACTERS)]
    if size < 104 + len(pieces):
        raise ValueError(
            f"a vocabulary of {size} tokens is too small for the generated vocab.txt ({104 + len(pieces)} needed)."
        )
    by_id = {token_id: token for token, token_id in SPECIAL_IDS.items()}
    tokens = [by_id.get(token_id, f"[unused{token_id - 1}]") for token_id in range(104)]
    tokens += pieces
    tokens += [f"[unused{number}]" for number in range(103, 103 + size - len(tokens))]
    return tokens


def write_synthetic_vocab(path: str | Path, size: int) -> Path:
    path = Path(path)
    path.write_text("\n".join(synthetic_vocab(size)) + "\n")
    return path
