"""Torch side: encoders, embedding extraction, adapter training, model versions, the retraining cycle."""
