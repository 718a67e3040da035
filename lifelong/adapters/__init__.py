"""Model families (backbones, spiking nets, expandable nets, CLIP, LLMs, sentence encoders) and the trainable
pieces attached to them (adapters, prompts, LoRA), with the input transforms they need. No plugin lives here."""
