"""Networks for class-incremental learning: small and spiking backbones (with their conversion-ready twins),
ANN-to-SNN conversion, expandable nets, CLIP/ViT vision towers with their adapters, prompts and input transforms."""
