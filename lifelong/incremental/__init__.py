"""The class-incremental engine: the ``Learner`` contract, streams, one run (``run.py``) and many runs
(``compare.py``), checkpoints, distributed runs, metrics, results, loggers, plots and ANN-to-SNN conversion of a
finished run. Strategies and components plug into it; it imports no plugin."""
