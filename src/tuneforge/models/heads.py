"""LM-head facts shared by the training loss and the memory estimator (no imports: the estimator stays light)."""

# Architectures whose forward ends in a plain `lm_head` Linear with no logit scaling or soft-capping, so the
# loss may fuse the head projection with the cross-entropy (train/loss.py).
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "olmo", "olmo2", "smollm3", "gemma",
                                    "starcoder2", "stablelm", "internlm2", "yi", "deepseek", "baichuan"})
CHUNK_BYTES = 32 * 2**20  # fp32 logits the fused loss holds at once
