"""Model families and the trainable pieces attached to them, in two halves that never import each other:
``nets/`` (vision and spiking networks) and ``lm/`` (language models). No plugin lives here."""
