"""Bridges to model families (backbones, spiking nets, CLIP, LLMs) and the trainable pieces attached to them."""
