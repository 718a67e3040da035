"""The core every family shares and no method owns: the plugin registry, typed configs, the atomic writes, device
and precision, user errors, and quieting Avalanche's import. It imports no engine, plugin, model or data set."""
