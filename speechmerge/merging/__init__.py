"""Merging: the method registry, the streaming engine and the methods themselves."""
