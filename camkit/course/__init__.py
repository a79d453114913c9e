"""Companions for the deep-learning course: exact walkthroughs, calculators and experiments."""
