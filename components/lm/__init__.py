"""The language model: resolving and loading it, generation and the decode loop, hidden-state latents."""
