"""Sweeps: a grid of runs from one file, tables and pictures of their results."""
