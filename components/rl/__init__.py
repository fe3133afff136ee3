"""Stage 2: the LoRA policy, rollouts, latent rewards, the clipped-surrogate loop and its checkpoints."""
