"""Training GPT-2: backward passes, the loss and the optimiser step (the other half of the model)."""
