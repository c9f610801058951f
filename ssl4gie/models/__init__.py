"""Backbones, checkpoint converters, heads and decoders."""
