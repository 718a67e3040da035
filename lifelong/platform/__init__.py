"""What every plugin shares and no method owns: registry, configs, runner, metrics, results, store, CLI."""
