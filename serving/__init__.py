"""Model serving: Triton model repository, text generation, client, publish and hot-swap."""
