"""Parameter naming shared by every stage: dotted paths of the parameter tree, and the prefix of the
layer-stacked block parameters (one leading layer axis; flattened per layer they are the
reference's `blocks.{i}.` names)."""

from __future__ import annotations

STACKED_PREFIX = "blocks."  # parameters under this prefix carry a leading layer axis


def path_name(path) -> str:
    return ".".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
