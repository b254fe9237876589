"""Models in plain PyTorch (Llama family) and their loaders (safetensors, GGUF)."""
