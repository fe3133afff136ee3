"""Judging and measuring: judges, attacks, the latent audit, reports."""
