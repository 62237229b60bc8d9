"""Pretraining: config and presets, objective, epoch loop, checkpoints, logging, the run driver."""
