"""One module per method; every public module here registers its strategies, editors or scorers."""
