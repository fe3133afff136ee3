"""The CRAFT projection/safety head (stage 1): the module, its loss and its separation metrics."""
