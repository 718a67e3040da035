"""Training components (registry kind ``component``): hooks a learner calls around its own loop.

One module per method; each registers a ``platform.learner.Component`` subclass with its config dataclass.
"""
