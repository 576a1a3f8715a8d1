"""Fine-tuning passes: recover accuracy lost to pruning or reparameterization, on calibration data."""
