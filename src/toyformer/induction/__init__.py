"""Paper 2, Chen, Sheen, Wang & Yang (NeurIPS 2024): TF(M, H, d, D) on in-context n-gram Markov chains becomes a
generalized induction head (copier, selector, classifier); the selected parents maximise the modified χ² mutual
information."""
