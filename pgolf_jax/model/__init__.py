"""Architectures: layers, linear parameterizations, attention variants, embeddings and the
model families built from them."""
