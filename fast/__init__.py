"""chainrule.fast: the same functions as reference/, optimized in torch (CPU and CUDA)."""
