"""The agent's memory of its deployment's facts: plain text in, the passages a question needs out.

    kb = KnowledgeBase.from_path("examples/kiosk.md", Embedder.from_manifest(manifest))
    hits = kb.search("when do you open?")             # best passages first, above a score floor
    block = facts_block(hits, count_tokens, budget)   # what goes into the LLM's system prompt

A knowledge source is a markdown or plain-text file, or a folder of them (``*.md``, ``*.markdown``,
``*.txt``, in name order). It is cut into passages at markdown headings and blank lines, each at
most ``KnowledgeOptions.passage_chars`` long (longer paragraphs are cut at sentence ends) and
prefixed with its heading, so "Saturday 9:00 to 17:00" still says it is about opening hours.

Passages are embedded by the package's ``embed`` component (a sentence-embedding graph: unit
vectors, so cosine similarity is a dot product) when the agent starts, and kept in memory. Why not
at export: a kiosk's facts change more often than its engines, the package stays sealed by its
hashes and shared by deployments, and a hundred passages embed in about a second on 2 CPU cores.

Per turn the question is embedded (one graph call) and ranked against the index with numpy; the
best ``top_k`` passages above ``min_score`` go into the prompt, within a token budget.

Engines and numpy only; no torch.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgevoice.backends import open_runner
from edgevoice.errors import EdgevoiceError
from edgevoice.manifest import Manifest
from edgevoice.runtime.text import pack

COMPONENT = "embed"
TEXT_SUFFIXES = (".md", ".markdown", ".txt")
FACTS_HEADER = "Facts about this place (answer from them when they fit the question):"
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")


@dataclass(frozen=True)
class KnowledgeOptions:
    """How passages are cut, how many are retrieved and how much of the prompt they may take."""

    passage_chars: int = 400  # longest passage (characters, heading included); ~100 LLM tokens
    top_k: int = 3  # passages retrieved per question
    min_score: float = 0.3  # cosine floor: below it a passage is not about the question
    max_prompt_tokens: int = 256  # LLM tokens the facts may take in the prompt, at most

    def __post_init__(self) -> None:
        if self.passage_chars < 40 or self.top_k < 1 or self.max_prompt_tokens < 16:
            raise ValueError("passage_chars must be >= 40, top_k >= 1 and max_prompt_tokens >= 16")


@dataclass(frozen=True)
class Passage:
    text: str  # what goes into the prompt: "heading: body"
    source: str  # file it came from
    index: int  # position in the knowledge base


@dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float  # cosine similarity to the question


@dataclass(frozen=True)
class Recall:
    """One retrieval: what was asked, what came back, what it cost (wall clock)."""

    query: str
    hits: tuple[Hit, ...]
    compute_s: float
    key: tuple[int, ...] = field(init=False)  # the passages, to tell whether two recalls agree

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", tuple(h.passage.index for h in self.hits))


# --- passages -----------------------------------------------------------------------------------

def read_sources(path: str | Path) -> list[tuple[str, str]]:
    """(name, text) of a knowledge file, or of every text file in a folder (name order)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise EdgevoiceError(f"{path} holds no {', '.join(TEXT_SUFFIXES)} files; put the agent's facts there")
    elif path.is_file():
        files = [path]
    else:
        raise EdgevoiceError(f"knowledge source {path} does not exist; give a text/markdown file or a folder of them")
    sources = []
    for file in files:
        try:
            sources.append((file.name, file.read_text(encoding="utf-8")))
        except UnicodeDecodeError as exc:
            raise EdgevoiceError(f"{file} is not UTF-8 text ({exc.reason}); save the facts as plain text or markdown") from exc
    return sources


def split_passages(text: str, max_chars: int = 400) -> list[str]:
    """Passages of a markdown/plain text: one per paragraph under its heading path, each <= max_chars."""
    passages, headings, paragraph = [], [], []
    title_level = [False]  # whether headings[0] is a level-1 title

    def close_paragraph() -> None:
        body = " ".join(line.strip() for line in paragraph).strip()
        paragraph.clear()
        if body:
            # A document's one title (level 1) above its sections says nothing the sections do not.
            path = headings[1:] if len(headings) > 1 and title_level[0] else headings
            prefix = " / ".join(h for h in path if h)
            passages.extend(_bounded(body, f"{prefix}: " if prefix else "", max_chars))

    for line in text.splitlines():
        heading = _HEADING.match(line)
        if heading:
            close_paragraph()
            level = len(heading.group(1))
            headings[:] = (headings + [""] * level)[: level - 1] + [heading.group(2)]
            title_level[0] = level == 1 or title_level[0] and level > 1
        elif not line.strip():
            close_paragraph()
        elif _LIST_ITEM.match(line):  # a list item is a fact of its own
            close_paragraph()
            paragraph.append(_LIST_ITEM.sub("", line, count=1))
            close_paragraph()
        else:
            paragraph.append(line)
    close_paragraph()
    return passages


def _bounded(body: str, prefix: str, max_chars: int) -> list[str]:
    """``prefix + body`` cut into pieces of at most ``max_chars``, at sentence ends, else at words."""
    room = max(max_chars - len(prefix), max_chars // 2)  # a very long heading path is cut, not the facts
    prefix = prefix[: max_chars - room]
    parts = (part for sentence in _SENTENCE_END.split(body) for part in _words_within(sentence, room))
    return [prefix + piece for piece in pack(parts, room)]


def _words_within(sentence: str, room: int) -> list[str]:
    """A sentence longer than ``room`` as runs of whole words (a single overlong word is cut)."""
    if len(sentence) <= room:
        return [sentence]
    return pack((word[:room] for word in sentence.split()), room)


# --- embedding ----------------------------------------------------------------------------------

class Embedder:
    """Texts -> unit vectors with the package's ``embed`` graph and its tokenizer."""

    def __init__(self, manifest: Manifest, backend: str = "ort", device: str = "cpu"):
        from tokenizers import Tokenizer

        spec = manifest.component(COMPONENT)
        self.dimension = int(spec.stream["dimension"])
        self.max_tokens = int(spec.stream["max_tokens"])
        self.max_batch = spec.dynamic_dims["batch"].max
        self.tokenizer = Tokenizer.from_file(str(manifest.path(spec.stream["tokenizer"])))
        self.tokenizer.enable_truncation(self.max_tokens)
        # Pad to the longest text of a call, not to the file's fixed 128: a question is ~12 tokens.
        self.tokenizer.enable_padding(pad_id=int(spec.stream["pad_id"]), pad_token="[PAD]")
        self.output = spec.outputs[0].name
        self.runner = open_runner(manifest, COMPONENT, backend=backend, device=device)

    @classmethod
    def from_manifest(cls, manifest: Manifest, backend: str = "ort", device: str = "cpu") -> Embedder | None:
        """The package's embedder, or None when the package has none (exported before it existed)."""
        if COMPONENT not in manifest.components:
            return None
        return cls(manifest, backend=backend, device=device)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dimension) float32 unit vectors; similar lengths are batched together."""
        out = np.zeros((len(texts), self.dimension), np.float32)
        lengths = [len(self.tokenizer.encode(t).ids) for t in texts] if len(texts) > 1 else [0]
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(texts), self.max_batch):
            chosen = order[start:start + self.max_batch]
            encodings = self.tokenizer.encode_batch([texts[i] for i in chosen])
            feeds = {"input_ids": np.array([e.ids for e in encodings], np.int64),
                     "attention_mask": np.array([e.attention_mask for e in encodings], np.int64)}
            out[chosen] = self.runner.infer(feeds)[self.output]
        return out


def missing_embed_error(manifest: Manifest) -> EdgevoiceError:
    """Knowledge asked of a package without the embedder: say how to get one."""
    target = manifest.target.get("name", "cpu")
    command = f"edgevoice export --model cascade --target {target} --out {manifest.directory} --force"
    return EdgevoiceError(f"this package has no '{COMPONENT}' component (the sentence embedder a knowledge memory "
                          f"needs); re-export it with `{command}`, or run without knowledge")


# --- the index ----------------------------------------------------------------------------------

class KnowledgeBase:
    """Passages and their embeddings, in memory; ``search`` ranks them for a question."""

    def __init__(self, passages: list[Passage], vectors: np.ndarray, embedder: Embedder,
                 options: KnowledgeOptions = KnowledgeOptions(), build_s: float = 0.0):
        self.passages, self.vectors, self.embedder, self.options = passages, vectors, embedder, options
        self.build_s = build_s  # seconds spent embedding the passages at start

    @classmethod
    def from_path(cls, path: str | Path, embedder: Embedder, options: KnowledgeOptions = KnowledgeOptions()) -> KnowledgeBase:
        started = time.perf_counter()
        passages = []
        for name, text in read_sources(path):
            for body in split_passages(text, options.passage_chars):
                passages.append(Passage(body, name, len(passages)))
        if not passages:
            raise EdgevoiceError(f"{path} holds no text; write the agent's facts there, one paragraph or list item each")
        vectors = embedder.embed([p.text for p in passages])  # (N, dimension)
        return cls(passages, vectors, embedder, options, time.perf_counter() - started)

    def search(self, query: str, top_k: int | None = None, min_score: float | None = None) -> Recall:
        """The passages most like ``query`` (best first), those scoring under the floor left out."""
        started = time.perf_counter()
        top_k = self.options.top_k if top_k is None else top_k
        floor = self.options.min_score if min_score is None else min_score
        if not query.strip():
            return Recall(query, (), time.perf_counter() - started)
        scores = self.vectors @ self.embedder.embed([query])[0]  # (N,) cosine similarities
        best = np.argsort(-scores, kind="stable")[:top_k]
        hits = tuple(Hit(self.passages[i], float(scores[i])) for i in best if scores[i] >= floor)
        return Recall(query, hits, time.perf_counter() - started)


def facts_block(hits: Sequence[Hit], count_tokens: Callable[[str], int], budget: int) -> str:
    """The retrieved passages as prompt text of at most ``budget`` tokens ("" when none fit).

    Passages are added best first; one that does not fit whole is left out, except the best,
    which is cut at words to fit (a huge passage still says something).
    """
    lines = [FACTS_HEADER]
    for rank, hit in enumerate(hits):
        candidate = "\n".join([*lines, f"- {hit.passage.text}"])
        if count_tokens(candidate) <= budget:
            lines.append(f"- {hit.passage.text}")
        elif rank == 0:
            words = hit.passage.text.split()
            while words and count_tokens("\n".join([*lines, "- " + " ".join(words)])) > budget:
                words = words[: len(words) * 3 // 4]  # shrink fast: a passage can be thousands of words
            if words:
                lines.append("- " + " ".join(words))
    return "\n".join(lines) if len(lines) > 1 else ""
