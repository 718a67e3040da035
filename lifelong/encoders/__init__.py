"""Spike encoders (plugin kind ``encoder``): sound to spike trains, one module per method (``base.py`` holds the
contract)."""
