"""Hand-written GPU kernels for the decode step (Triton), each with a torch fallback."""
