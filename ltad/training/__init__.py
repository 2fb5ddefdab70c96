"""Losses, phases, the DeepSpeed engine, checkpoints and the Ray TorchTrainer wiring."""
