"""Language models for editing and scoring: model loading and the GGUF cache, the shared model pool, sentence
encoders, the edit IO of each model family, routed LoRA and the text classifier."""
