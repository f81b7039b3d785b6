"""The knowledge memory on its own: passages from markdown, the index, retrieval, the prompt budget.

The embedder is the package's ``embed`` graph (exported alone into a temp dir) on onnxruntime; the
sample is ``examples/kiosk.md`` with the questions in ``tests/knowledge_fixtures.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from knowledge_fixtures import KIOSK, KIOSK_QUESTIONS, embed_package

from edgevoice.errors import EdgevoiceError
from edgevoice.runtime.knowledge import (
    FACTS_HEADER,
    Embedder,
    Hit,
    KnowledgeBase,
    KnowledgeOptions,
    Passage,
    facts_block,
    missing_embed_error,
    read_sources,
    split_passages,
)

pytestmark = pytest.mark.slow  # exports the embed graph once (~20 s on 2 cores)


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    return Embedder(embed_package(tmp_path_factory.mktemp("embed")))


@pytest.fixture(scope="module")
def kiosk(embedder):
    return KnowledgeBase.from_path(KIOSK, embedder)


# --- passages -----------------------------------------------------------------------------------------

def test_passages_follow_headings_paragraphs_and_list_items():
    text = ("# Station\n\n## Level 2\n### Kitchen\nThe kitchen is at the end\nof the corridor.\n\n"
            "- the fridge is on the left\n- the sink is on the right\n\n## Garden\nOpen in summer.\n")
    assert split_passages(text) == [
        "Level 2 / Kitchen: The kitchen is at the end of the corridor.",
        "Level 2 / Kitchen: the fridge is on the left",
        "Level 2 / Kitchen: the sink is on the right",
        "Garden: Open in summer.",
    ]


def test_plain_text_without_headings_is_cut_at_blank_lines():
    assert split_passages("First fact.\n\nSecond fact\ncontinues.") == ["First fact.", "Second fact continues."]


def test_long_paragraphs_are_cut_at_sentences_within_the_bound():
    sentence = "The shuttle bus leaves from stop C every twenty minutes. "
    passages = split_passages("## Buses\n" + sentence * 30, max_chars=200)
    assert len(passages) > 5 and all(len(p) <= 200 for p in passages)
    assert all(p.startswith("Buses: The shuttle") and p.endswith("minutes.") for p in passages)
    unbroken = split_passages("x" * 1000 + " end", max_chars=100)  # one overlong word is cut, not kept whole
    assert all(len(p) <= 100 for p in unbroken) and unbroken[-1] == "end"


def test_a_folder_is_read_in_name_order_and_only_its_text_files(tmp_path):
    (tmp_path / "b.md").write_text("# B\nsecond")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "logo.png").write_bytes(b"\x89PNG\x00\xff")
    assert read_sources(tmp_path) == [("a.txt", "first"), ("b.md", "# B\nsecond")]


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.md", "does not exist"),
    (lambda p: p, "holds no .md"),
    (lambda p: (p / "latin1.txt").write_bytes(b"caf\xe9") and p / "latin1.txt", "not UTF-8"),
])
def test_bad_sources_say_what_to_do(tmp_path, make, message):
    with pytest.raises(EdgevoiceError, match=message):
        read_sources(make(tmp_path))


# --- retrieval ----------------------------------------------------------------------------------------

def test_the_kiosk_sample_has_ten_passages(kiosk):
    assert len(kiosk.passages) == 10 and kiosk.vectors.shape == (10, 384)
    assert np.allclose(np.linalg.norm(kiosk.vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("question, heading, _", KIOSK_QUESTIONS)
def test_the_right_passage_is_first(kiosk, question, heading, _):
    recall = kiosk.search(question)
    assert recall.hits, f"nothing above the floor for {question!r}"
    assert recall.hits[0].passage.text.startswith(f"{heading}:"), [(h.passage.text[:30], h.score) for h in recall.hits]


def test_an_unrelated_question_retrieves_nothing(kiosk):
    assert kiosk.search("What is the capital of France?").hits == ()  # best score 0.06, floor 0.3
    assert kiosk.search("   ").hits == ()


def test_top_k_and_floor(kiosk):
    question = KIOSK_QUESTIONS[0][0]
    everything = kiosk.search(question, top_k=10, min_score=-1.0)
    assert len(everything.hits) == 10
    assert [h.score for h in everything.hits] == sorted((h.score for h in everything.hits), reverse=True)
    assert len(kiosk.search(question, top_k=2, min_score=-1.0).hits) == 2
    assert all(h.score >= 0.3 for h in kiosk.search(question, top_k=10).hits)


def test_batched_embedding_equals_one_by_one(embedder):
    texts = [p for p in split_passages(KIOSK.read_text())][:6] + ["short"]
    batched = embedder.embed(texts)
    single = np.stack([embedder.embed([t])[0] for t in texts])
    assert np.abs(batched - single).max() < 1e-5


def test_a_folder_becomes_one_index(tmp_path, embedder):
    (tmp_path / "rooms.md").write_text("## Room 204\nThe robotics lab is room 204 on the second floor.")
    (tmp_path / "hours.txt").write_text("The building closes at 22:00.")
    knowledge = KnowledgeBase.from_path(tmp_path, embedder)
    hit = knowledge.search("Where is the robotics lab?").hits[0]
    assert hit.passage.source == "rooms.md" and "204" in hit.passage.text


# --- the prompt ---------------------------------------------------------------------------------------

def words(text: str) -> int:
    return len(text.split())


def hits(*texts: str) -> list[Hit]:
    return [Hit(Passage(t, "x.md", i), 1.0 - i / 10) for i, t in enumerate(texts)]


def test_facts_are_added_best_first_within_the_budget():
    found = hits("alpha beta gamma", "delta epsilon", "zeta eta theta iota kappa")
    header = words(FACTS_HEADER)
    block = facts_block(found, words, header + 8)
    assert block == f"{FACTS_HEADER}\n- alpha beta gamma\n- delta epsilon"  # the third does not fit
    assert words(block) <= header + 8
    assert facts_block(found, words, header) == ""  # room for the header alone: no facts at all
    assert facts_block([], words, 1000) == ""


def test_a_huge_best_passage_is_cut_to_fit():
    block = facts_block(hits("word " * 5000), words, 300)
    assert 0 < words(block) <= 300 and block.startswith(FACTS_HEADER)


def test_missing_embedder_error_names_the_re_export(tmp_path):
    from types import SimpleNamespace

    manifest = SimpleNamespace(target={"name": "jetson-orin"}, directory=tmp_path)
    message = str(missing_embed_error(manifest))
    assert "no 'embed' component" in message
    assert f"edgevoice export --model cascade --target jetson-orin --out {tmp_path} --force" in message


def test_options_are_checked():
    with pytest.raises(ValueError, match="top_k"):
        KnowledgeOptions(top_k=0)


def test_talk_refuses_a_missing_knowledge_source_before_loading_engines(monkeypatch, tmp_path):
    """``talk --knowledge`` checks the source first (loading the engines takes seconds)."""
    from pathlib import Path

    from edgevoice.cli.main import app
    from typer.testing import CliRunner

    import edgevoice.runtime.agent as agent_module

    def refuse(*args, **kwargs):
        raise AssertionError("talk loaded engines before checking --knowledge")

    monkeypatch.setattr(agent_module, "Agent", refuse)
    question = str(Path(__file__).resolve().parents[2] / "examples" / "question.wav")
    result = CliRunner().invoke(app, ["talk", "--package", "engines/cpu", "--input", question, "--output",
                                      str(tmp_path / "o.wav"), "--knowledge", str(tmp_path / "facts.md")])
    assert isinstance(result.exception, EdgevoiceError), result.exception
    assert "facts.md does not exist" in str(result.exception)
