"""Training the base: the losses, the GAN objective, the trainer, checkpoints and the bundled base."""
