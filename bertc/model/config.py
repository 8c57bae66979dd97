"""BERT hyper-parameters (google-research `bert_config.json` fields) and the size presets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

# hidden_act -> what the encoder's activation computes. google-research's "gelu" is the tanh approximation;
# "gelu_exact" (bertc's name) is the erf form, which Hugging Face calls "gelu".
ACTIVATIONS = ("gelu", "gelu_exact")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}: each head needs an equal share of the hidden size."
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not supported; bertc builds {', '.join(ACTIVATIONS)}: "
                "google-research's 'gelu' is the tanh approximation, 'gelu_exact' the erf form (Hugging Face's 'gelu')."
            )

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_json_file(cls, path: str | Path) -> BertConfig:
        raw = json.loads(Path(path).read_text())
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in raw.items() if key in known})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


# Shapes of the google-research releases; `tiny` is for tests (seconds), `mini` is the demo.
PRESETS: dict[str, BertConfig] = {
    "tiny": BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    "mini": BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "base": BertConfig(),
    "large": BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


def preset(name: str) -> BertConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model size {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]
