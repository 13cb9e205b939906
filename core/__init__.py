"""Shared domain of radsearch: settings, errors, payload schema, encoders and the vector index."""
