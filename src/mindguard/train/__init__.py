"""Training: the embedded encoder guard (CPU) and, with the `train-llm` extra, generative guards."""
