"""Layers shared by every family: embeddings, attention, feed-forward, block, stack, heads."""
