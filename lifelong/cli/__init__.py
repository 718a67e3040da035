"""The command line, the one package that may import every other: command families and the demo tour."""
