"""toyformer: data with known structure, small transformers, and the theory of what they learn."""

__version__ = "0.1.0"
