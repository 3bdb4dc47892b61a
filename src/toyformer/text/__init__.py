"""Real text: corpora read as documents, their vocabularies and LDA topic fits, word-pair classes by topic, and the
topic structure of pretrained BERT-family encoders (paper 1; docs/topic-structure.md §8). Topic runs on a corpus build
on this."""
