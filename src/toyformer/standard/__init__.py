"""Standard decoder-only transformers on the n-gram tasks of paper 2, with hooks and role probes
(docs/standard-transformers.md)."""
