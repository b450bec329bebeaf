"""Optimizers as optax transforms (Muon, Newton-Schulz variants, Adam groups) and the lr schedules."""
