"""Verifier shapes the benchmarks build with random weights (throughput does not care about
weights): `LlamaConfig(**SHAPES[name])`."""

# fmt: off
# What the Llama 3.1 sizes share: vocab, GQA with 8 KV heads, head_dim 128, llama3 rope.
_LLAMA_3_1 = dict(num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072,
                  rms_norm_eps=1e-5, rope_theta=500000.0, head_dim=128,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})

SHAPES = {
    # head_dim 16: the smallest the compiled flex-attention kernel takes
    "tiny": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=2048, num_hidden_layers=8, head_dim=16),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, num_hidden_layers=30,
                         max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=True),
    "llama-3.1-8b": _LLAMA_3_1 | dict(hidden_size=4096, intermediate_size=14336,
                                      num_attention_heads=32, num_hidden_layers=32),
    # Issue 8's memory check: the draft of a 70B verifier (hidden 8192) trains on one GPU
    # (`bench_train.py --config llama-3.1-70b`); its datagen needs more than one H200.
    "llama-3.1-70b": _LLAMA_3_1 | dict(hidden_size=8192, intermediate_size=28672,
                                       num_attention_heads=64, num_hidden_layers=80),
}
# fmt: on
