"""Training: the engine (config -> trained run directory), multi-process launch, warm starts."""
