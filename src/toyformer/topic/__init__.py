"""Paper 1, Li, Li & Risteski (ICML 2023): masked-LM training on topic-model (LDA) documents and on real text; topic
structure in the embeddings, in W^V and in attention, and the two stages in which it forms."""
