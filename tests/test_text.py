"""Real text (docs/topic-structure.md §8): corpora, tokenisation, vocabulary, LDA topics and their cache, the word-piece
merge, the embedding and attention class statistics against brute force, `toyformer analyze` on a small random BERT, and
MLM training on a corpus."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from toyformer import tasks
from toyformer.cli import app
from toyformer.config import ConfigError
from toyformer.text.config import CorpusConfig, TopicsConfig, VocabConfig
from toyformer.text.corpus import STOP_WORDS, build_vocabulary, documents, tokenize
from toyformer.text.probes import CLASSES, AttentionClassStats, WordMatcher, embedding_class_stats, piece_positions
from toyformer.text.topics import cache_key, corpus_topics

PLANTED = {"Rivers": "zor", "Music": "mel", "Stars": "pix"}  # label → the prefix of its 12 words
LETTERS = "abcdefghijkl"


def planted_corpus(path, docs: int = 240, length: int = 40, seed: int = 0, mix: bool = False):
    """A JSONL corpus with three planted topics: each document draws its words from one label's 12 words (with
    ``mix``, its second half from the next label's), plus stop words; one document in six is 'Uncategorized'."""
    rng = np.random.default_rng(seed)
    labels = list(PLANTED)
    with path.open("w") as f:
        for k in range(docs):
            label = labels[k % 3]
            words = [PLANTED[label] + LETTERS[i] for i in rng.integers(0, 12, length)]
            if mix:
                other = PLANTED[labels[(k + 1) % 3]]
                words[length // 2 :] = [other + w[3:] for w in words[length // 2 :]]
            words[::5] = ["the"] * len(words[::5])
            row = {"text": " ".join(words).capitalize() + ".", "label": label if k % 6 else "Uncategorized"}
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def corpus(tmp_path):
    return CorpusConfig(source=str(planted_corpus(tmp_path / "planted.jsonl")))


# LDA finds local optima: with seeds 0 and 2 this fit merges two planted topics; seed 1 recovers all three
PLANTED_TOPICS = TopicsConfig(num_topics=3, passes=20, top_fraction=1 / 3, chunksize=100, seed=1)


def test_tokenize_lowercases_and_splits_on_non_letters():
    assert tokenize("Café au lait, 2001: the U.S. don't_stop") == [
        "café",
        "au",
        "lait",
        "the",
        "u",
        "s",
        "don",
        "t",
        "stop",
    ]


def test_jsonl_and_folder_corpora(tmp_path, corpus):
    docs = list(documents(corpus))
    assert len(docs) == 240
    assert Counter(d.label for d in docs) == {"Rivers": 40, "Music": 80, "Stars": 80, None: 40}
    assert len(list(documents(corpus.model_copy(update={"max_docs": 7})))) == 7
    twice = list(documents(corpus.model_copy(update={"repeat": 2})))
    assert len(twice) == 480 and twice[240] == docs[0]

    (tmp_path / "txt" / "Arts").mkdir(parents=True)
    (tmp_path / "txt" / "Arts" / "a.txt").write_text("Painting and sculpture")
    (tmp_path / "txt" / "b.txt").write_text("No label here")
    got = list(documents(CorpusConfig(source=str(tmp_path / "txt"))))
    assert [(d.text, d.label) for d in got] == [("Painting and sculpture", "Arts"), ("No label here", None)]


def test_bad_corpora_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        list(documents(CorpusConfig(source=str(tmp_path / "missing"))))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2"):
        list(documents(CorpusConfig(source=str(bad))))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ConfigError, match="must be .jsonl"):
        list(documents(CorpusConfig(source=str(tmp_path / "x.csv"))))


def test_wiki_vital_loads_in_three_languages():
    pytest.importorskip("gensim")  # the wiki extra
    en = list(documents(CorpusConfig()))
    assert len(en) == 10033
    labels = Counter(d.label for d in en)
    assert len(labels) == 12 and labels[None] == 1000 and labels["People"] == 1828  # 'Uncategorized' → None
    assert en[:3] == list(documents(CorpusConfig(max_docs=3)))  # a fixed order
    assert sum(len(tokenize(d.text)) for d in en) > 700_000
    for lang in ("fr", "es"):
        assert len(list(documents(CorpusConfig(lang=lang, max_docs=50)))) == 50


def test_vocabulary_against_counting(corpus):
    cfg = VocabConfig(size=30, min_count=2)
    vocab = build_vocabulary(corpus, cfg)
    counts = Counter(w for d in documents(corpus) for w in tokenize(d.text))
    expected = [w for w, c in counts.most_common() if c >= 2 and w not in STOP_WORDS["en"]][:30]
    assert vocab.words == expected and "the" not in vocab.index
    assert vocab.counts == [counts[w] for w in expected]
    assert vocab.docs == 240
    # words in more than a share of the documents are dropped
    doc_freq = Counter(w for d in documents(corpus) for w in set(tokenize(d.text)))
    spread = build_vocabulary(corpus, VocabConfig(max_doc_share=0.3, min_count=1))
    assert set(spread.words) == {w for w, n in doc_freq.items() if n <= 0.3 * 240 and w not in STOP_WORDS["en"]}
    with pytest.raises(ConfigError, match="lower vocab.min_count"):
        build_vocabulary(corpus, VocabConfig(min_count=10_000))
    full = build_vocabulary(corpus, VocabConfig(min_count=1))
    assert full.encode("Zora the ZORB zzz") == [full.index["zora"], full.index["zorb"]]


@pytest.fixture
def planted_topics(corpus):
    pytest.importorskip("gensim")
    return corpus_topics(corpus, VocabConfig(min_count=1), PLANTED_TOPICS)


def test_lda_recovers_planted_topics_and_labels(planted_topics):
    topics, _, cached = planted_topics
    assert not cached
    words = topics.vocab.words
    assert len(words) == 36
    truth = np.array([[w.startswith(p) for p in PLANTED.values()] for w in words])
    z = topics.assignment()
    assert z.sum(1).tolist() == [1] * 36  # 12 top words per topic, each word in one
    # the fitted topics are the planted ones, up to their order
    match = truth.T.astype(int) @ z.astype(int)
    assert sorted(match.max(0).tolist()) == [12, 12, 12]
    assert (topics.label_assignment() == truth[:, [list(PLANTED).index(label) for label in topics.labels]]).all()
    assert topics.topic_label_nmi() > 0.95
    assert 0.9 <= topics.topics_per_doc <= 1.1
    posterior = topics.assignment(PLANTED_TOPICS.model_copy(update={"rule": "posterior", "posterior_threshold": 0.9}))
    assert (posterior == z).all()


def test_topics_are_cached_by_settings(corpus, planted_topics):
    topics, path, _ = planted_topics
    again, path2, cached = corpus_topics(corpus, VocabConfig(min_count=1), PLANTED_TOPICS)
    assert cached and path2 == path
    assert np.array_equal(again.word_topic, topics.word_topic) and again.vocab.words == topics.vocab.words
    # the word → topic rules are applied on load; the fit's own settings make a new entry
    other_rule = PLANTED_TOPICS.model_copy(update={"rule": "posterior"})
    assert cache_key(corpus, VocabConfig(min_count=1), other_rule) == path.name
    assert cache_key(corpus, VocabConfig(min_count=1), PLANTED_TOPICS.model_copy(update={"passes": 2})) != path.name
    assert not list(path.parent.glob(".tmp-*"))  # nothing half-written


def test_embedding_class_stats_against_brute_force():
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(30, 5, generator=gen, dtype=torch.float64)
    topics = torch.rand(30, 4, generator=gen) < 0.3
    rows = torch.rand(30, generator=gen) < 0.8
    got = embedding_class_stats(table, topics, rows, chunk=7)
    sums, counts = {}, Counter()
    idx = rows.nonzero().flatten().tolist()
    for i, j in itertools.permutations(idx, 2):
        zi, zj = topics[i], topics[j]
        name = "unassigned" if not (zi.any() and zj.any()) else "same_topic" if (zi & zj).any() else "diff_topic"
        ip = float(table[i] @ table[j])
        cos = ip / float(table[i].norm() * table[j].norm())
        sums[name] = sums.get(name, np.zeros(2)) + [ip, cos]
        counts[name] += 1
    for name in ("same_topic", "diff_topic", "unassigned"):
        assert got[f"emb_pairs_{name}"] == counts[name]
        assert got[f"emb_{name}"] == pytest.approx(sums[name][0] / counts[name], rel=1e-9)
        assert got[f"emb_cos_{name}"] == pytest.approx(sums[name][1] / counts[name], rel=1e-9)
    assert sum(got["hist_same_topic"]) == counts["same_topic"]


def test_piece_positions():
    word_index = torch.tensor([[-1, 0, 0, 1, 2, 2, 2, -1, -1]])
    assert piece_positions(word_index).tolist() == [[0, 0, 1, 0, 0, 1, 2, 0, 1]]


def test_attention_class_stats_against_brute_force():
    """Pieces merged into words (query: mean over its pieces; key: sum), classes, n/100 scaling, per head."""
    gen = torch.Generator().manual_seed(1)
    b, h, t = 3, 2, 12
    word_index = torch.tensor(
        [
            [-1, 0, 0, 1, 2, 3, 3, 3, 4, -1, -1, -1],
            [-1, 0, 1, 1, 2, 3, 4, 5, 6, 7, -1, -1],
            [-1, 0, 1, 2, 2, 3, -1, -1, -1, -1, -1, -1],
        ]
    )
    word_vocab = torch.tensor([[0, 1, -1, 0, 2, -1, -1, -1], [3, 4, 5, 3, -1, 1, 2, 0], [5, 5, 4, -1, -1, -1, -1, -1]])
    topics = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0], [1, 0], [0, 1]], dtype=torch.bool)
    attentions = [torch.softmax(torch.randn(b, h, t, t, generator=gen), -1) for _ in range(2)]
    stats = AttentionClassStats(topics, n_layers=2, n_heads=h)
    stats.add(attentions, word_index, word_vocab)
    got = stats.means()

    expected = torch.zeros(2, h, len(CLASSES))
    values = {c: [[[] for _ in range(h)] for _ in range(2)] for c in CLASSES}
    for s in range(b):
        words = sorted(set(word_index[s].tolist()) - {-1})
        n = len(words)
        for qi, ki in itertools.product(words, words):
            vq, vk = int(word_vocab[s, qi]), int(word_vocab[s, ki])
            if vq < 0 or vk < 0:
                continue
            if vq == vk:
                name = "same_word"
            elif not (topics[vq].any() and topics[vk].any()):
                name = "unassigned"
            elif (topics[vq] & topics[vk]).any():
                name = "same_topic"
            else:
                name = "diff_topic"
            qs = (word_index[s] == qi).nonzero().flatten()
            ks = (word_index[s] == ki).nonzero().flatten()
            for layer, head in itertools.product(range(2), range(h)):
                a = attentions[layer][s, head][qs][:, ks].sum(1).mean()
                values[name][layer][head].append(float(a) * n / 100)
    for k, name in enumerate(CLASSES):
        for layer, head in itertools.product(range(2), range(h)):
            expected[layer, head, k] = float(np.mean(values[name][layer][head]))
    assert torch.allclose(got.float(), expected, atol=1e-6)


def _tiny_bert(tmp_path, texts):
    """A small randomly initialised BERT; its WordPiece vocabulary is small, so many words split into pieces."""
    transformers = pytest.importorskip("transformers")
    from toyformer.text.analysis import random_bert

    model_dir = random_bert(tmp_path / "tiny-bert", texts, vocab_size=80, layers=2, heads=4, width=32)
    return model_dir, transformers.AutoTokenizer.from_pretrained(model_dir)


def test_word_matcher_finds_vocabulary_words_among_pieces(tmp_path, corpus):
    texts = [d.text for d in documents(corpus)]
    _, tokenizer = _tiny_bert(tmp_path, texts)
    vocab = build_vocabulary(corpus, VocabConfig(min_count=1))
    matcher = WordMatcher(tokenizer, vocab.words)
    enc = tokenizer(texts[:5], padding=True, return_tensors="pt")
    from toyformer.text.analysis import word_index_of

    word_index = word_index_of(enc, 5)
    assert any(len(tokenizer.tokenize(w)) > 1 for w in vocab.words)  # the merge is exercised
    got = matcher(enc["input_ids"], word_index)
    for s in range(5):
        spans = [enc.word_to_chars(s, w) for w in range(int(word_index[s].max()) + 1)]
        words = [texts[s][span.start : span.end].lower() for span in spans]
        expected = [vocab.index.get(w, -1) for w in words]
        assert got[s, : len(expected)].tolist() == expected


def test_analyze_a_random_bert(tmp_path):
    pytest.importorskip("gensim")
    corpus = CorpusConfig(source=str(planted_corpus(tmp_path / "mixed.jsonl", mix=True)))
    model_dir, _ = _tiny_bert(tmp_path, [d.text for d in documents(corpus)])
    out = tmp_path / "analysis"
    args = ["analyze", str(model_dir), "--corpus", corpus.source, "--docs", "30", "--out", str(out)]
    sets = ["--set", "vocab.min_count=1", "--set", "topics.num_topics=3", "--set", "topics.passes=20"]
    sets += ["--set", "topics.seed=1", "--set", "topics.chunksize=100", "--set", "topics.top_fraction=0.3333333333"]
    result = CliRunner().invoke(app, args + sets)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out)
    summary = json.loads((out / "summary.json").read_text())
    final = summary["final"]
    for key in (
        "emb_same_topic",
        "emb_diff_topic",
        "emb_cos_same_topic",
        "emb_cos_diff_topic",
        "attn_same_topic",
        "attn_diff_topic",
        "topics_per_doc",
        "label_attn_same_topic",
        "truth_same_label_given_same_topic",
    ):
        assert isinstance(final[key], float), key
    assert set(final["attn_head_gap"]) == {"0", "1"} and all(len(v) == 4 for v in final["attn_head_gap"].values())
    assert final["docs"] == 30
    assert 0 <= final["truth_same_label_given_diff_topic"] <= 1
    assert {c["name"] for c in summary["checks"]} >= {"attention: same topic > different topic"}
    assert (out / "figures" / "attention_gap.png").stat().st_size > 0
    detail = json.loads((out / "attention.json").read_text())
    assert np.array(detail["attention"]["topics"]).shape == (2, 4, len(CLASSES))

    missing = CliRunner().invoke(app, ["analyze", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "config.json" in missing.output
    assert not (tmp_path / "x").exists()


def test_corpus_topics_command(corpus):
    pytest.importorskip("gensim")
    args = ["corpus", "topics", "--corpus", corpus.source, "--topics", "3", "--passes", "20"]
    args += ["--set", "vocab.min_count=1", "--set", "topics.top_fraction=0.334", "--set", "topics.seed=1"]
    args += ["--set", "topics.chunksize=100", "--json"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    info = json.loads(first.stdout.rsplit("\n", 2)[0])
    assert info["documents"] == 240 and info["vocabulary"] == 36 and not info["cached"]
    assert info["topic_label_nmi"] > 0.95
    second = CliRunner().invoke(app, args)
    assert json.loads(second.stdout.rsplit("\n", 2)[0])["cached"]
    bad = CliRunner().invoke(app, ["corpus", "topics", "--corpus", "nowhere.jsonl"])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1


def test_mlm_on_a_corpus_learns_topic_structure(tmp_path, corpus):
    """The wiki-mlm recipe on the planted corpus: short training already separates the topics in the embeddings."""
    pytest.importorskip("gensim")
    from toyformer.topic.experiment import TopicExperiment
    from toyformer.train.loop import train

    overrides = [
        f"data.corpus.source={corpus.source}",
        "data.vocab.size=40",
        "data.vocab.min_count=1",
        "data.topics.num_topics=3",
        "data.topics.passes=20",
        "data.topics.top_fraction=0.334",
        "data.topics.seed=1",
        "data.topics.chunksize=100",
        "data.dev_docs=40",
        "train.steps=150",
        "train.probes=5",
        "probes.docs=20",
    ]
    cfg = tasks.load("topic/wiki-mlm", overrides)
    run = train(TopicExperiment(cfg), tmp_path / "run", figures=False)
    final = run.summary()["final"]
    assert final["emb_same_topic"] > final["emb_diff_topic"]
    assert final["emb_cos_same_topic"] > final["emb_cos_diff_topic"]
    assert final["documents"] == 240 and final["topics_per_doc"] == pytest.approx(1.0, abs=0.1)
    assert list(final["attn_head_gap"]) == ["0"] and len(final["attn_head_gap"]["0"]) == 4
