"""Evaluation harnesses: the model against baselines on synthetic users, real photos and subject masks."""
