"""Class-incremental strategies, one module per method; every public module registers its strategies."""
