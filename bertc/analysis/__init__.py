"""A Graph -> facts about it: the pattern matcher (match) and the BERT structure written in it (structure)."""
