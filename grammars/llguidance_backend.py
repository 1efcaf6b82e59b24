"""The llguidance backend: every kind (JSON Schema, regex, choice, Lark) as an `LLMatcher`.

JSON Schemas compile strictly (`lenient: false`, no `oneOf` coercion): a keyword or format
llguidance cannot enforce is refused with its name. JSON whitespace is compact by default
(no free whitespace anywhere, so a model cannot loop on blanks).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import llguidance
import llguidance.hf
import torch

from corral.grammars.errors import grammar_error, json_schema_error
from corral.grammars.lark_lexing import check_no_forced_loop
from corral.grammars.mask_cache import MaskCache, Node
from corral.grammars.matcher import Matcher
from corral.grammars.param_error import ParamError
from corral.grammars.schema_rewrite import prepared_schema
from corral.grammars.spec import GrammarSpec

_LIMITS = llguidance.LLParserLimits(verbose_errors=False)

# Token slices for text lexemes. Where a slice's whole language continues the current lexeme
# (llguidance checks this per state), all its tokens are allowed at once instead of being
# walked one trie node at a time: a walk over a 128K vocabulary costs ~1 ms, a slice a few us.
# Text without "<" (or control characters) continues free text before a tool call, in which
# no call marker can start (see tools/lark_text.py). Slices of words for bounded character
# classes were tried and dropped: they slowed JSON strings in tool arguments more than they
# sped up regexes.
TEXT_SLICES = [r"[^<\x00-\x08\x0B\x0C\x0E-\x1F\x7F]+"]


class LLGuidanceBackend:
    """Compiles specs into llguidance matchers for one tokenizer."""

    name = "llguidance"

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: Sequence[int],
                 json_whitespace: str | None = None) -> None:
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        self.json_whitespace = json_whitespace
        self.lltok = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=vocab_size, eos_token=self.eos_token_ids
        )
        # Token-trie slices tuned for JSON strings: ~10% faster JSON masks than the general ones.
        self.lltok_json = self.lltok.with_slices(llguidance.LLTokenizer.json_slices())
        # Regexes, Lark grammars and tool calls: the JSON slices plus one of free text.
        self.lltok_text = self.lltok.with_slices(
            [*llguidance.LLTokenizer.json_slices(), *TEXT_SLICES])

    def json_options(self) -> dict:
        """Compile options forced on every schema (they override a schema's `x-guidance`)."""
        options = {"lenient": False, "coerce_one_of": False, "item_separator": ",",
                   "key_separator": ":", "whitespace_flexible": False}
        if self.json_whitespace is not None:
            options["whitespace_pattern"] = self.json_whitespace
        return options

    def grammar_text(self, spec: GrammarSpec) -> str:
        """The llguidance grammar definition for `spec` (not yet checked)."""
        if spec.kind == "json":
            schema = prepared_schema(spec.text, self.name)
            try:
                return llguidance.LLMatcher.grammar_from_json_schema(
                    schema, overrides=self.json_options())
            except (TypeError, ValueError) as e:
                raise json_schema_error(self.name, str(e)) from None
        if spec.kind == "json_object":
            return llguidance.LLMatcher.grammar_from_json_schema(
                '{"type":"object"}', overrides=self.json_options())
        if spec.kind in ("regex", "choice"):
            return llguidance.LLMatcher.grammar_from_regex(spec.text)
        if spec.kind == "grammar":
            check_no_forced_loop(spec.text)  # llguidance would loop forever on it
            return llguidance.LLMatcher.grammar_from_lark(spec.text)
        raise ParamError(
            f"structured_outputs.{spec.kind}", "not a kind the llguidance backend compiles")

    def validate(self, spec: GrammarSpec) -> None:
        """Check `spec` without the tokenizer (fast); ValueError naming the problem."""
        self._check(spec, self.grammar_text(spec), with_tokenizer=False)

    def compile(self, spec: GrammarSpec):
        """A factory of fresh matchers for `spec`; ValueError if llguidance refuses it."""
        grammar = self.grammar_text(spec)
        lltok = self.lltok_json if spec.kind in ("json", "json_object") else self.lltok_text
        template = llguidance.LLMatcher(lltok, grammar, log_level=0, limits=_LIMITS)
        if template.is_error():
            raise _refusal(spec, template.get_error())
        lock = threading.Lock()

        def factory() -> LLGuidanceMatcher:
            with lock:
                inner = template.deep_copy()
            return LLGuidanceMatcher(inner, self.eos_token_ids)

        return factory

    def _check(self, spec: GrammarSpec, grammar: str, with_tokenizer: bool) -> None:
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
            grammar, self.lltok if with_tokenizer else None, limits=_LIMITS)
        if is_error:
            raise _refusal(spec, messages[0] if messages else "unknown error")


def _refusal(spec: GrammarSpec, message: str) -> ValueError:
    if spec.kind in ("json", "json_object"):
        return json_schema_error("llguidance", message)
    return grammar_error(spec, message)


class LLGuidanceMatcher(Matcher):
    """A `Matcher` over one `llguidance.LLMatcher`."""

    backend_name = "llguidance"

    def __init__(self, inner: llguidance.LLMatcher, eos_token_ids: Sequence[int]) -> None:
        self.inner = inner
        self.eos_token_ids = frozenset(eos_token_ids)
        self._eos_token_ids = list(eos_token_ids)
        self._num_accepted = 0
        # EOS accepted once the matcher had stopped: llguidance keeps no history entry for it.
        self._num_unrecorded_eos = 0
        # With a shared mask cache: the trie node of each accepted prefix (see mask_cache.py).
        self.mask_cache: MaskCache | None = None
        self._path: list[Node | None] = []

    def use_mask_cache(self, cache: MaskCache) -> None:
        """Share `cache` (the grammar's) from the start; call before the first token."""
        self.mask_cache = cache
        self._path = [cache.root]

    @property
    def cache_node(self) -> Node | None:
        """The mask cache's node of the current state (None: no cache or untracked)."""
        return self._path[-1] if self._path else None

    def is_eos_unrecorded(self, token_id: int) -> bool:
        """Whether accepting `token_id` now leaves no history entry in llguidance."""
        return token_id in self.eos_token_ids and self.inner.is_stopped()

    def accepted(self, token_id: int, unrecorded: bool) -> None:
        """Bookkeeping after `inner` consumed `token_id` (here or in a batched call)."""
        self._num_accepted += 1
        self._num_unrecorded_eos += unrecorded
        if self.mask_cache is not None:
            node = self._path[-1]
            self._path.append(None if node is None else self.mask_cache.child(node, token_id))

    @staticmethod
    def accepted_rows(matchers: Sequence[LLGuidanceMatcher], token_ids: Sequence[int],
                      rows: Sequence[int], verdicts: Sequence[bool],
                      unrecorded: set[int]) -> None:
        """`accepted` (the same bookkeeping, in one loop without a call per row) for each
        `matchers[rows[k]]` whose `inner` consumed `token_ids[rows[k]]` (`verdicts[k]`) in
        one batched call; `unrecorded`: rows whose token was an EOS the matcher keeps no
        entry of."""
        for i, ok in zip(rows, verdicts, strict=True):
            if not ok:
                continue
            matcher = matchers[i]
            matcher._num_accepted += 1
            if unrecorded and i in unrecorded:
                matcher._num_unrecorded_eos += 1
            cache = matcher.mask_cache
            if cache is not None:
                path = matcher._path
                node = path[-1]
                path.append(None if node is None else cache.child(node, token_ids[i]))

    def accept_token(self, token_id: int) -> bool:
        token_id = int(token_id)
        if self.inner.is_error():
            return False
        unrecorded = self.is_eos_unrecorded(token_id)
        ok = self.inner.consume_token(token_id)
        if ok:
            self.accepted(token_id, unrecorded)
        return ok

    def rollback(self, num_tokens: int) -> None:
        if num_tokens < 0 or num_tokens > self._num_accepted:
            raise ParamError(
                "num_tokens", f"cannot roll back {num_tokens} of {self._num_accepted} tokens")
        self._num_accepted -= num_tokens
        if self.mask_cache is not None and num_tokens:
            del self._path[-num_tokens:]
        skipped = min(num_tokens, self._num_unrecorded_eos)
        self._num_unrecorded_eos -= skipped
        num_tokens -= skipped
        if num_tokens and not self.inner.rollback(num_tokens):
            raise ParamError("num_tokens",
                             f"rollback of {num_tokens} failed ({self.error_message})")

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        target = bitmask[row]
        if self.inner.is_error():
            fill_eos_only(target, self._eos_token_ids)
            return
        cache, node = self.mask_cache, self.cache_node
        if cache is not None and cache.lookup(node, target):
            return
        self.inner.unsafe_compute_mask_ptr(target.data_ptr(), target.numel() * 4)
        if cache is not None:
            cache.filled(node, target)

    def is_terminated(self) -> bool:
        return self.inner.is_stopped() and not self.inner.is_error()

    def is_error(self) -> bool:
        return self.inner.is_error()

    @property
    def error_message(self) -> str | None:
        if not self.inner.is_error():
            return None
        return self.inner.get_error() or "matcher error"

    def forced_tokens(self) -> list[int]:
        if self.inner.is_error() or self.inner.is_stopped():
            return []
        return list(self.inner.compute_ff_tokens())

    def can_end(self) -> bool:
        return self.inner.is_accepting() and not self.inner.is_error()

    def validate_tokens(self, token_ids: list[int]) -> int:
        if self.inner.is_error() or not token_ids:
            return 0
        return self.inner.validate_tokens(token_ids)

    def ends_after(self, token_ids: list[int]) -> bool:
        """One native check: the tokens, then an end-of-sequence token, all accepted."""
        if self.inner.is_error():
            return False
        if not token_ids:
            return self.can_end()
        checked = [*token_ids, self._eos_token_ids[0]]
        return self.inner.validate_tokens(checked) == len(checked)

    @property
    def num_accepted(self) -> int:
        return self._num_accepted


def fill_eos_only(target: torch.Tensor, eos_token_ids: Sequence[int]) -> None:
    """Write a one-row mask `[words]` that allows only the EOS tokens."""
    target.zero_()
    for token_id in eos_token_ids:
        word, bit = divmod(token_id, 32)
        if word < target.numel():
            value = int(target[word]) | (1 << bit)
            target[word] = value - (1 << 32) if value >= 1 << 31 else value

