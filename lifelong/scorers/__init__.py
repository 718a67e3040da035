"""Reward scorer plugins (kind ``scorer``): the structural reward model and its scalar baseline."""
