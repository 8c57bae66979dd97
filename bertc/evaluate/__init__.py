"""(original, compiled) -> parity and speed: verify, bench, their seeded batches, spreads and length mixes."""
