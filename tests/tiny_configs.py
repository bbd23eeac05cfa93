"""Tiny model configurations shared by the tests (random weights, CPU-fast, real architectures)."""

TINY_VIT = {"patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2}
TINY_BERT = {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64}
TINY_CLAP = {"spec_size": 64, "num_mel_bins": 64, "patch_embeds_hidden_size": 16, "depths": [1, 1],
             "num_attention_heads": [1, 2], "window_size": 4}
TINY_CLIP = {
    "projection_dim": 16,
    "text_config": {"vocab_size": 99, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                    "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 97,
                    "eos_token_id": 98, "pad_token_id": 1},
    "vision_config": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                      "num_hidden_layers": 1, "num_attention_heads": 2},
}
