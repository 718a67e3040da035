"""Editor plugins (kind ``editor``), one module per method; the edit engine they plug into is ``lifelong.editing``."""
