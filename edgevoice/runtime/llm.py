"""The LLM at run time: tokenizer, chat formatting, sampling and a session over the LLM engine.

Runs on numpy + a Runner only (no torch). ``LlmSession`` drives the package's ``llm`` graph, whose
"tokens" dim is dynamic: prompt chunks of up to ``prefill_max_tokens`` and then one token per call,
over one KV cache read and written at a position. Packages exported before that graph hold two,
``llm_prefill`` (chunks) and ``llm_decode`` (one token), over the same cache; ``from_manifest``
opens whichever the manifest has. The session remembers which tokens the cache holds, so a new
turn prefills only what differs from the cached conversation; stale rows past the position are
masked by the graph, so moving the position back is a rollback. Where the graph's cache capacity
is dynamic, the session grows it as the conversation fills it (``cache_growth``).

Chat formatting: the weights' own jinja2 chat template is rendered in jinja2's sandbox when
jinja2 is installed, since only the template knows the model's exact format (system default,
spacing); without jinja2, or without a template, a documented ChatML formatter is used
(``<|im_start|>role\\ncontent<|im_end|>\\n``, SmolLM2's and Qwen2's format).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgevoice.backends.base import Runner
from edgevoice.errors import EdgevoiceError
from edgevoice.runtime.cache_growth import CacheGrowth
from edgevoice.runtime.drafts import continuation

Message = Mapping[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}
LLM_COMPONENT = "llm"  # one graph: prefill chunks and decode steps
LEGACY_LLM_COMPONENTS = ("llm_prefill", "llm_decode")  # packages exported before the one graph
# Draft tokens checked per call: on 2 CPU cores a call of SmolLM2-135M costs 33.5 ms for 1 token,
# 36.5 ms for 1 + 4 and 43.5 ms for 1 + 7, and most drafts are wrong, so short ones pay best.
DRAFT_TOKENS = 4


class DecodeConstraint(Protocol):
    """What ``generate`` asks a constraint (``tool_grammar.ToolCallConstraint`` is one).

    The text it sees is the reply's token pieces joined (``LlmTokenizer.pieces``), including
    ``prefix``, which is prefilled with the prompt as if the model had written it.
    """

    prefix: str

    def pick(self, logits: np.ndarray, text: str, sample: Callable[[np.ndarray], int],
             pieces: Sequence[str], stop_ids: frozenset[int]) -> int | None: ...

    def finished(self, text: str) -> bool: ...


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen from the logits."""

    temperature: float = 0.0  # 0 = greedy (argmax); otherwise logits are divided by it
    top_k: int = 0  # keep the k most likely tokens; 0 = no limit
    top_p: float = 1.0  # keep the smallest set whose probability reaches top_p; 1 = no limit
    seed: int | None = None  # seed of the numpy Generator; None = fresh entropy
    # Nucleus boundary. True (Hugging Face ``generate``'s rule, the cascade's): the token whose
    # probability carries the sum past top_p is kept. False (Freeze-Omni's ``AudioLLM._post_decode``):
    # only tokens whose cumulative sum stays <= top_p are kept, the most likely one always.
    top_p_keeps_crossing: bool = True

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise EdgevoiceError(
                f"sampling needs temperature >= 0, 0 < top_p <= 1 and top_k >= 0; got {self.temperature}, {self.top_p}, {self.top_k}"
            )


def _probability_of(logits: np.ndarray, token_ids: Sequence[int]) -> float:
    """Softmax mass of ``token_ids`` in one logits row (vocab,)."""
    logits = logits.astype(np.float64)
    weights = np.exp(logits - logits.max())
    return float(weights[list(token_ids)].sum() / weights.sum())


def sample_token(logits: np.ndarray, config: SamplingConfig, rng: np.random.Generator) -> int:
    """Next token id from ``logits`` (vocab,) under ``config``."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    if config.temperature == 0:
        return int(np.argmax(logits))
    scaled = logits / config.temperature
    order = np.argsort(-scaled, kind="stable")  # most likely first
    if config.top_k:
        order = order[: config.top_k]
    probs = np.exp(scaled[order] - scaled[order[0]])
    probs /= probs.sum()
    if config.top_p < 1.0:
        cumulative = np.cumsum(probs)
        if config.top_p_keeps_crossing:  # up to the first sum >= top_p, that token included
            keep = int(np.searchsorted(cumulative, config.top_p) + 1)
        else:  # every sum <= top_p, at least the top token
            keep = max(1, int(np.searchsorted(cumulative, config.top_p, side="right")))
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
    return int(order[rng.choice(len(order), p=probs)])


class LlmTokenizer:
    """A ``tokenizers`` tokenizer loaded from its JSON file."""

    def __init__(self, path: str | Path):
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise EdgevoiceError("the LLM needs the 'tokenizers' package; install it with: pip install tokenizers") from exc
        if not Path(path).is_file():
            raise EdgevoiceError(f"tokenizer file {path} is missing; re-export the package")
        self.tokenizer = Tokenizer.from_file(str(path))

    def encode(self, text: str) -> list[int]:
        # Special tokens written in the text (<|im_start|>) map to their ids: chat formatting relies on it.
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def pieces(self) -> list[str]:
        """Every token's own text, by id ("" for special tokens); computed once (~0.15 s)."""
        if not hasattr(self, "_pieces"):
            ids = [[i] for i in range(self.tokenizer.get_vocab_size(with_added_tokens=True))]
            self._pieces = self.tokenizer.decode_batch(ids, skip_special_tokens=True)
        return self._pieces


def chatml(messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    """ChatML: the fallback formatter when no template (or no jinja2) is available."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


class ChatFormatter:
    """Renders messages with the model's chat template (jinja2 sandbox) or ChatML."""

    def __init__(self, template: str | None):
        self.template = None
        if template:
            try:
                from jinja2.sandbox import ImmutableSandboxedEnvironment
            except ImportError:
                return  # documented fallback: ChatML
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
            self.template = env.from_string(template)

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        if self.template is None:
            return chatml(messages, add_generation_prompt)
        return self.template.render(messages=list(messages), add_generation_prompt=add_generation_prompt)


def conversation_turns(messages: Sequence[Message]) -> tuple[list[Message], list[list[Message]]]:
    """(leading system messages, turns); a turn starts at a user message and holds its replies."""
    system, rest = [], list(messages)
    while rest and rest[0]["role"] == "system":
        system.append(rest.pop(0))
    turns: list[list[Message]] = []
    for message in rest:
        if message["role"] == "user" or not turns:
            turns.append([message])
        else:
            turns[-1].append(message)
    return system, turns


def fit_context(messages: Sequence[Message], count_tokens: Callable[[Sequence[Message]], int], budget: int) -> list[Message]:
    """Drop the oldest turns until the prompt fits ``budget`` tokens; system messages always stay.

    The newest turn is never dropped: if it alone does not fit, that is an error the caller must
    handle (shorten the message or raise max_context at export).
    """
    system, turns = conversation_turns(messages)
    while True:
        kept = system + [m for turn in turns for m in turn]
        size = count_tokens(kept)
        if size <= budget:
            return kept
        if len(turns) <= 1:
            raise EdgevoiceError(
                f"the system prompt and the last message take {size} tokens, more than the {budget} the context "
                "leaves after room for the reply; shorten them, lower max_new_tokens, or export with a larger max_context"
            )
        turns = turns[1:]


@dataclass(frozen=True)
class GeneratedToken:
    """One generated token and the text it completes (empty while a UTF-8 character is split)."""

    token_id: int
    text: str


@dataclass(frozen=True)
class LlmSnapshot:
    """What the KV cache holds: its token ids and a copy of the state arrays."""

    tokens: tuple[int, ...]
    state: dict[str, np.ndarray]


def llm_components(manifest) -> tuple[str, ...]:
    """The LLM graphs of a package: ("llm",), or ("llm_prefill", "llm_decode") in an older package."""
    if LLM_COMPONENT in manifest.components:
        return (LLM_COMPONENT,)
    if all(name in manifest.components for name in LEGACY_LLM_COMPONENTS):
        return LEGACY_LLM_COMPONENTS
    return (manifest.component(LLM_COMPONENT).name,)  # absent: raises, naming what is there and the fix


class LlmSession:
    """One conversation over shared LLM runners: its own KV cache and token history.

    ``decode`` None: ``prefill``'s graph (dynamic "tokens" dim) also runs the one-token steps,
    as the ``llm`` component of a package does; older packages pass their ``llm_decode`` runner.
    """

    def __init__(self, prefill: Runner, decode: Runner | None, tokenizer_path: str | Path,
                 facts: Mapping[str, Any] | None = None):
        self.prefill_runner = prefill
        self.decode_runner = decode if decode is not None else prefill
        self.facts = dict(facts if facts is not None else prefill.component.stream)
        self.max_context: int = int(self.facts["max_context"])
        self.chunk: int = int(self.facts["prefill_max_tokens"])
        self.stop_ids = frozenset(int(i) for i in self.facts["stop_token_ids"])
        # Positions the graph returns logits for (``tail_logits``; packages exported before it have
        # none): greedy replies are then drafted from the prompt, DRAFT_TOKENS checked per call.
        self.tail = int(self.facts.get("tail_logits", 0))
        # A graph with a dynamic cache capacity starts small and grows (two-graph packages: fixed).
        self.growth = CacheGrowth.of(prefill.component) if decode is None else None
        self.drafted = 0  # reply tokens of the last generation that a draft gave (no call of their own)
        self.tokenizer = LlmTokenizer(tokenizer_path)
        self.formatter = ChatFormatter(self.facts.get("chat_template"))
        self.finish_reason: str | None = None  # "stop" | "length" after a generation
        self.dropped_messages = 0  # how many messages the context policy dropped last time
        self.reset()

    @classmethod
    def from_manifest(cls, manifest, backend: str = "ort", device: str = "cpu") -> LlmSession:
        from edgevoice.backends import open_runner

        names = llm_components(manifest)
        runners = [open_runner(manifest, name, backend=backend, device=device) for name in names]
        stream = manifest.component(names[0]).stream
        return cls(runners[0], runners[1] if len(runners) > 1 else None, manifest.path(stream["tokenizer"]), stream)

    def fork(self) -> LlmSession:
        """Another conversation over the same runners and tokenizer: an empty cache of its own."""
        other = copy.copy(self)
        other.finish_reason, other.dropped_messages = None, 0
        other.reset()
        return other

    @property
    def one_graph(self) -> bool:
        """Whether one graph runs prompt chunks and decode steps (False for a two-graph package)."""
        return self.decode_runner is self.prefill_runner

    # --- state ------------------------------------------------------------------------------

    def reset(self) -> None:
        self.state = self.prefill_runner.initial_state(1)
        self.tokens: list[int] = []  # token ids whose keys/values the cache holds, in order
        self.last_hidden: np.ndarray | None = None  # (hidden,) final-normed state of the last fed token
        # The logits (vocab,) after exactly these cached tokens, left by ``score_then_prepare`` for
        # the ``prepare`` that follows it; checked against ``tokens``, so any change voids them.
        self._prepared: tuple[tuple[int, ...], np.ndarray] | None = None
        self._committed = self.snapshot()

    def snapshot(self) -> LlmSnapshot:
        return LlmSnapshot(tuple(self.tokens), {k: v.copy() for k, v in self.state.items()})

    def restore(self, snapshot: LlmSnapshot) -> None:
        self.tokens = list(snapshot.tokens)
        self.state = {k: v.copy() for k, v in snapshot.state.items()}

    def commit(self) -> None:
        """Mark the current conversation as the point ``rollback`` returns to."""
        self._committed = self.snapshot()

    def rollback(self) -> None:
        """Forget everything since the last commit (a barge-in cut the reply, say)."""
        self.restore(self._committed)

    # --- graph calls -------------------------------------------------------------------------

    def _run(self, runner: Runner, ids: Sequence[int]) -> dict[str, np.ndarray]:
        position = len(self.tokens)
        if position + len(ids) > self.max_context:
            raise EdgevoiceError(f"the KV cache holds {self.max_context} tokens; {position} + {len(ids)} do not fit")
        if self.growth is not None:
            self.state = self.growth.room_for(self.state, position + len(ids))
        feeds = {"input_ids": np.asarray([ids], dtype=np.int64), "position": np.array([position], dtype=np.int64)}
        outputs = runner.infer({**feeds, **self.state})
        wiring = runner.component.state
        self.state = {wiring[name]: outputs[name] for name in wiring}
        self.tokens.extend(int(i) for i in ids)
        self.last_hidden = outputs["hidden"][0]  # (hidden,)
        return outputs

    def feed(self, ids: Sequence[int]) -> np.ndarray:
        """Append ``ids`` to the cache in chunks of up to ``prefill_max_tokens`` (a two-graph package's
        decode graph takes the single tokens); logits after the last."""
        if not ids:
            raise EdgevoiceError("feed needs at least one token")
        logits = None
        for start in range(0, len(ids), self.chunk):
            piece = ids[start : start + self.chunk]
            logits = self._run(self.decode_runner if len(piece) == 1 else self.prefill_runner, piece)["logits"][0]
        return logits  # (vocab,)

    def feed_drafted(self, token: int, draft: Sequence[int]) -> list[np.ndarray]:
        """Append ``token`` and the part of ``draft`` that greedy decoding confirms, in one call.

        Returns the logits after ``token`` and after each confirmed draft token (1 + confirmed
        rows): the caller's next greedy picks are exactly the confirmed tokens, then a new one.
        The rejected tail's cache rows are left behind, masked, and overwritten by the next call.
        """
        draft = list(draft)[: self.tail - 1]
        rows = self._run(self.prefill_runner, [token, *draft])["tail_logits"][0]  # (1 + len(draft), vocab)
        confirmed = 0
        while confirmed < len(draft) and int(np.argmax(rows[confirmed])) == draft[confirmed]:
            confirmed += 1
        if confirmed < len(draft):
            del self.tokens[len(self.tokens) - (len(draft) - confirmed) :]
            self.last_hidden = None  # it was a rejected token's
        return list(rows[: confirmed + 1])

    def prepare(self, prompt_ids: Sequence[int]) -> np.ndarray:
        """Make the cache hold exactly ``prompt_ids``, re-using the longest cached prefix; last logits."""
        if not prompt_ids:
            raise EdgevoiceError("the prompt is empty; give at least one message")
        if self._prepared is not None and self._prepared[0] == tuple(self.tokens) == tuple(prompt_ids):
            logits, self._prepared = self._prepared[1], None  # used once: a caller may mask it in place
            return logits  # fed by score_then_prepare's call: no call of its own
        common = min(self._cached_prefix(prompt_ids), len(prompt_ids) - 1)  # re-run one token for its logits
        del self.tokens[common:]  # the graph masks the stale rows past the position
        return self.feed(list(prompt_ids[common:]))

    def _cached_prefix(self, ids: Sequence[int]) -> int:
        """How many leading ``ids`` the cache already holds."""
        common = 0
        for cached, new in zip(self.tokens, ids):
            if cached != new:
                break
            common += 1
        return common

    def next_token_probability(self, prompt_ids: Sequence[int], token_ids: Sequence[int]) -> float:
        """P(the token after ``prompt_ids`` is one of ``token_ids``); the cache keeps ``prompt_ids``,
        so a reply that continues them re-uses the prefill."""
        return _probability_of(self.prepare(prompt_ids), token_ids)

    def score_then_prepare(self, prompt_ids: Sequence[int], at: int, token_ids: Sequence[int]) -> float | None:
        """``next_token_probability(prompt_ids[:at], token_ids)`` and ``prepare(prompt_ids)`` in one call.

        The words' end-of-turn vote scores the user's words; the reply's prompt is the same tokens
        plus a short tail (the punctuation and the chat template's ~6 tokens). Fed in one call, the
        vote's logits are one of the call's ``tail_logits`` rows (causal attention: the tail does
        not change them), and the prompt's last logits are kept for the reply's own ``prepare``: one
        LLM call (~25 ms here) less before the reply's first token. None, with nothing fed, where one
        call cannot give both (no ``tail_logits``, a tail longer than they cover, or more new tokens
        than one prompt chunk); the caller then scores apart.
        """
        after = len(prompt_ids) - at  # tokens past the scored position's input
        start = min(self._cached_prefix(prompt_ids), at - 1)  # feed the scored position again if cached
        if not (0 < at <= len(prompt_ids) and after < self.tail and len(prompt_ids) - start <= self.chunk):
            return None
        del self.tokens[start:]
        outputs = self._run(self.prefill_runner, list(prompt_ids[start:]))
        rows = outputs["tail_logits"][0]  # (min(fed, tail), vocab): the last fed positions
        self._prepared = (tuple(self.tokens), outputs["logits"][0])
        return _probability_of(rows[len(rows) - 1 - after], token_ids)

    # --- chat --------------------------------------------------------------------------------

    def prompt_ids(self, messages: Sequence[Message], max_new_tokens: int) -> list[int]:
        """Token ids of the rendered prompt after the context policy (oldest turns dropped)."""
        budget = self.max_context - max_new_tokens
        if budget <= 0:
            raise EdgevoiceError(f"max_new_tokens={max_new_tokens} leaves no room in a {self.max_context}-token context")
        count = lambda msgs: len(self.tokenizer.encode(self.formatter.render(msgs)))
        kept = fit_context(messages, count, budget)
        self.dropped_messages = len(messages) - len(kept)
        return self.tokenizer.encode(self.formatter.render(kept))

    def generate(
        self,
        messages: Sequence[Message],
        max_new_tokens: int = 128,
        sampling: SamplingConfig = SamplingConfig(),
        commit: bool = True,
        constraint: DecodeConstraint | None = None,
    ) -> Iterator[GeneratedToken]:
        """Yield the reply token by token (text as soon as it is whole UTF-8), stopping at a stop token.

        With ``commit`` the finished reply becomes the rollback point; a caller that stops
        iterating early (barge-in) decides itself: ``rollback()`` or ``commit()``. With
        ``constraint`` the reply starts with its ``prefix`` (prefilled with the prompt, yielded as
        tokens) and it chooses each token; ``finish_reason`` is "tool_call" when it ends the reply.
        """
        rng = np.random.default_rng(sampling.seed)
        forced = self.tokenizer.encode(constraint.prefix) if constraint is not None and constraint.prefix else []
        prompt = self.prompt_ids(messages, max_new_tokens) + forced
        logits = self.prepare(prompt)
        # Greedy, unconstrained replies are drafted from the prompt (prompt lookup): the same tokens,
        # fewer calls. A sampled or grammar-constrained reply keeps one call per token.
        drafting = self.tail > 1 and sampling.temperature == 0 and constraint is None
        ahead: list[np.ndarray] = []  # logits (vocab,) of positions a confirmed draft already fed
        self.drafted = 0
        pieces = self.tokenizer.pieces() if constraint is not None else []
        reply: list[int] = []
        emitted, said = "", ""  # the text yielded; the pieces joined (what the constraint reads)
        self.finish_reason = "length"
        for token in forced:
            reply.append(token)
            delta = self._delta(reply, emitted)
            emitted, said = emitted + delta, said + pieces[token]
            yield GeneratedToken(token, delta)
        for _ in range(max_new_tokens - len(forced)):
            if constraint is None:
                token = sample_token(logits, sampling, rng)
            else:
                token = constraint.pick(logits, said, lambda x: sample_token(x, sampling, rng), pieces, self.stop_ids)
            if token is None or token in self.stop_ids:
                self.finish_reason = "stop"
                break
            reply.append(token)
            delta = self._delta(reply, emitted)
            emitted += delta
            yield GeneratedToken(token, delta)
            if constraint is not None:
                said += pieces[token]
                if constraint.finished(said):
                    self.finish_reason = "tool_call"
                    break
            if not ahead and len(self.tokens) >= self.max_context:
                break
            logits = self._next_logits(token, prompt + reply, ahead if drafting else None, max_new_tokens - len(reply))
        if commit:
            self.commit()

    def _next_logits(self, token: int, context: list[int], ahead: list[np.ndarray] | None, budget: int) -> np.ndarray:
        """Logits after ``token`` (vocab,): a confirmed draft's call already made them, or a new call
        makes them, which also checks a draft of what follows (``ahead`` None: no drafting). The
        rows of a confirmed draft go to ``ahead``; ``budget`` is how many more tokens may come."""
        if ahead:
            self.drafted += 1
            return ahead.pop(0)
        if ahead is None:
            return self.feed([token])
        room = min(budget, self.max_context - len(self.tokens)) - 1
        first, *rest = self.feed_drafted(token, self._draft(context, room))
        ahead.extend(rest)
        return first

    def _draft(self, context: list[int], room: int) -> list[int]:
        """What the context says follows its last token (nearest place first), up to ``room``
        tokens and before any stop token (a reply never feeds its own end)."""
        if room <= 0:
            return []
        draft = []
        # Only where the last two tokens recur: a one-token match (" the", " is") drafts a guess
        # that is mostly wrong, and a wrong draft makes its call cost more than a one-token step
        # (16 questions: decode 49.5 -> 57.3 tok/s, the first phrase as soon; BENCHMARKS.md).
        for token in continuation(context[:-1], context, latest=True, pairs_only=True)[: min(room, DRAFT_TOKENS)]:
            if token in self.stop_ids:
                break
            draft.append(token)
        return draft

    def _delta(self, reply: list[int], emitted: str) -> str:
        """The new text once ``reply`` decodes to whole UTF-8 ("" while a character is split)."""
        text = self.tokenizer.decode(reply)
        return "" if text.endswith("\ufffd") else text[len(emitted) :]

    def reply(self, messages: Sequence[Message], **options: Any) -> str:
        """The whole reply as one string (``generate`` collected)."""
        return "".join(piece.text for piece in self.generate(messages, **options))
