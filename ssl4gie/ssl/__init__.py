"""Self-supervised pretraining: method pieces (heads, losses, momentum encoders, masking), one file per method."""
