"""The prompt router: which prompts the aligned adapter answers and which the base model answers."""
