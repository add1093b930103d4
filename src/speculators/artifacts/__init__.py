"""The on-disk contracts between stages: sample files, data_config.json, token_freq.pt,
d2t/t2d and checkpoints. Stages meet only here."""
