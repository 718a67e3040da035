"""What every plugin shares and no method owns: registry, configs, device and precision, checkpoints, learner,
streams, runner, distributed runs, metrics, results. It imports no plugin, no model family and no data set."""
