"""MiniLM-L6 sentence embeddings (all-MiniLM-L6-v2): a BERT encoder, mean pooling, L2 norm."""

from edgevoice.models.minilm.model import MiniLm, MiniLmConfig

__all__ = ["MiniLm", "MiniLmConfig"]
