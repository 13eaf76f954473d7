"""Image quality: the shared feature statistics (the one SWD), metrics and learning-free baselines."""
