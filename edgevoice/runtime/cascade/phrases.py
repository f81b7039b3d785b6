"""Where the reply's text is cut into phrases for the voice, as the LLM writes it.

Each phrase is synthesized on its own, so a cut is heard: the voice ends the phrase with a fall
and a short gap. Sentences are the natural unit. The first phrase may end sooner, because the
reply starts sounding only once it is cut: at a comma, or in a long first sentence at a word
boundary a speaker would also pause at.

That boundary is where a phrase of content ends and a function word opens the next one
("Jupiter is the largest planet | in our solar system", "The capital of France | is Paris").
A fixed word count cut anywhere: "There are seven days in a | week." was heard as two
utterances, the second a lone word. The word lists are English, as are the cascade's
recognizer (Whisper tiny.en) and voices.
"""

from __future__ import annotations

import re

# A sentence ends at a mark before a space, or at a mark the text ends with, except a period
# after a digit: the LLM writes "approximately 299." and then "792".
_PHRASE_END = re.compile(r"[.!?;:]\s|[!?]$|(?<!\d)\.$")
_CLAUSE_END = re.compile(r",\s")
_MIN_PHRASE_CHARS = 12  # do not speak "Yes." alone when more is coming at once
_MIN_FIRST_CLAUSE_CHARS = 20  # the first audio may start at a comma: a listener waits for it
FIRST_PHRASE_MIN_WORDS = 5  # a first phrase cut mid-sentence has at least this many words ...
FIRST_PHRASE_MAX_WORDS = 8  # ... and is cut after the next content word once it has this many
_WHOLE_WORD = re.compile(r"(\S+)\s+")  # a word followed by a space: no later token can grow it

_ARTICLES = {"a", "an", "the"}
_PREPOSITIONS = {
    "about", "above", "across", "after", "against", "along", "among", "around", "at", "before",
    "behind", "below", "beneath", "beside", "between", "beyond", "by", "during", "for", "from",
    "in", "inside", "into", "near", "of", "off", "on", "onto", "out", "outside", "over", "per",
    "since", "than", "through", "throughout", "to", "toward", "towards", "under", "until", "up",
    "upon", "via", "with", "within", "without",
}
_CONJUNCTIONS = {
    "and", "as", "because", "but", "if", "nor", "or", "so", "that", "though", "unless", "when",
    "whenever", "where", "whereas", "whether", "which", "while", "who", "whom", "whose", "yet",
}
_AUXILIARIES = {
    "am", "are", "be", "been", "being", "can", "could", "did", "do", "does", "had", "has", "have",
    "is", "may", "might", "must", "shall", "should", "was", "were", "will", "would",
}
# Words that lean on the next one: a phrase ending here leaves it hanging ("... in a | week").
_NEVER_LAST = _ARTICLES | _PREPOSITIONS | _CONJUNCTIONS | _AUXILIARIES | {
    "my", "your", "his", "her", "its", "our", "their", "this", "these", "those", "some", "any",
    "each", "every", "no", "not", "very", "more", "most", "less", "least", "such", "i", "we",
    "they", "he", "she", "it's", "i'm", "you're", "we're", "they're", "there's", "that's",
    "don't", "doesn't", "can't", "won't", "isn't", "aren't", "wasn't", "let's",
}
# Words that open a phrase of their own: a speaker may pause before them.
_OPENS_PHRASE = _PREPOSITIONS | _CONJUNCTIONS | _AUXILIARIES


def _opens_phrase(word: str) -> bool:
    """Whether ``word`` opens a phrase: a function word above, a bracket, or a figure (a speaker
    pauses before "299,792 kilometers", and its digits are many tokens to wait for). A word still
    being written is judged as it stands: " is" rarely grows into "island", and if it does, the
    cut is merely where a word count would have put it."""
    return word[:1] == "(" or word[:1].isdigit() or _bare(word) in _OPENS_PHRASE


def _bare(word: str) -> str:
    return word.strip("\"'()[],;:").lower().replace("\u2019", "'")


def phrase_cut(text: str, spoken_upto: int, first: bool = False) -> int:
    """End index of the next complete phrase after ``spoken_upto``, or 0 if none is complete yet.

    The first phrase may also end at a comma, or at a word boundary in a long first sentence
    (``first_words_cut``), so the reply starts sounding sooner.
    """
    for match in _PHRASE_END.finditer(text, spoken_upto):
        if match.end() - spoken_upto >= _MIN_PHRASE_CHARS:
            return match.end()
    if first:
        for match in _CLAUSE_END.finditer(text, spoken_upto):
            if match.end() - spoken_upto >= _MIN_FIRST_CLAUSE_CHARS:
                return match.end()
        return first_words_cut(text, spoken_upto)
    return 0


def first_words_cut(text: str, start: int) -> int:
    """Where a long first sentence may be cut, judged on whole words and the one begun; 0 while
    none is due.

    From ``FIRST_PHRASE_MIN_WORDS`` words on, the cut falls before a word that opens a phrase
    (``_opens_phrase``) after one that does not lean on it. With
    ``FIRST_PHRASE_MAX_WORDS`` words and no such place yet, it falls after the next word that
    can end a phrase, so the first audio never waits for a whole long sentence.
    """
    words = [(m.group(1), m.end()) for m in _WHOLE_WORD.finditer(text, start)]
    begun = text[words[-1][1]:] if words else ""  # the word after the last whole one, if begun
    for count in range(FIRST_PHRASE_MIN_WORDS, len(words) + 1):
        last, end = _bare(words[count - 1][0]), words[count - 1][1]
        if last in _NEVER_LAST:
            continue
        if count >= FIRST_PHRASE_MAX_WORDS:
            return end
        if _opens_phrase(words[count][0] if count < len(words) else begun.strip()):
            return end
    return 0
