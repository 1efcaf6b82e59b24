"""The outlines-core backend: JSON Schema, regex and choice as a token-level DFA (`Index`).

Schemas are checked first (`outlines_schema_check`) so that no keyword is silently dropped.
Each compiled index keeps a per-state cache of packed masks shared by all its matchers, so
filling a row is one copy after the first visit of a state: a state of the index's DFA
determines the allowed tokens exactly, so a stored mask is never stale. The masks live in the
process-wide `MaskStore` (least recently used out first, within its byte budget).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence

import llguidance
import outlines_core
import torch
from outlines_core.json_schema import build_regex_from_schema

from corral.grammars.errors import grammar_error, json_schema_error
from corral.grammars.llguidance_backend import fill_eos_only
from corral.grammars.mask_cache import MaskStore, Node, shared_store
from corral.grammars.matcher import Matcher
from corral.grammars.outlines_schema_check import check_outlines_schema
from corral.grammars.param_error import ParamError
from corral.grammars.schema_rewrite import prepared_schema
from corral.grammars.spec import GrammarSpec

# Any JSON object, nesting values at most one level deep: outlines-core's default depth
# (2) makes a regex that takes ~15 s to index on a 49k vocabulary; depth 1 takes ~1 s.
_GUIDE_ROLLBACK = 1024  # Guide history kept for cheap rollback; deeper ones replay tokens
_JSON_OBJECT = '{"type":"object","depth":1}'


class OutlinesBackend:
    """Compiles json / json_object / regex / choice specs with outlines-core."""

    name = "outlines"

    def __init__(self, lltok, vocab_size: int, eos_token_ids: Sequence[int],
                 json_whitespace: str | None = None) -> None:
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        self.json_whitespace = json_whitespace or ""
        self._lltok = lltok
        self._vocabulary: outlines_core.Vocabulary | None = None
        self._lock = threading.Lock()

    def vocabulary(self) -> outlines_core.Vocabulary:
        """The token-bytes vocabulary (built once, from the llguidance tokenizer's bytes)."""
        with self._lock:
            if self._vocabulary is None:
                by_bytes: dict[bytes, list[int]] = {}
                eos = set(self.eos_token_ids)
                for token_id in range(min(self.vocab_size, self._lltok.vocab_size)):
                    if token_id in eos or self._lltok.is_special_token(token_id):
                        continue
                    piece = self._lltok.decode_bytes([token_id])
                    if piece:
                        by_bytes.setdefault(piece, []).append(token_id)
                self._vocabulary = outlines_core.Vocabulary(self.eos_token_ids[0], by_bytes)
            return self._vocabulary

    def regex_for(self, spec: GrammarSpec) -> str:
        """The regex outlines-core compiles for `spec`; ValueError when it cannot be enforced."""
        if spec.kind in ("regex", "choice"):
            return spec.text
        if spec.kind in ("json", "json_object"):
            schema = prepared_schema(_JSON_OBJECT if spec.kind == "json_object" else spec.text,
                                     self.name)
            check_outlines_schema(schema)
            try:
                return build_regex_from_schema(json.dumps(schema), self.json_whitespace)
            except Exception as e:  # noqa: BLE001 - outlines-core raises bare exceptions
                raise json_schema_error("outlines", str(e)) from None
        raise ParamError(
            f"structured_outputs.{spec.kind}", "the outlines backend compiles only json, "
            "json_object, regex and choice; use backend='llguidance'")

    def validate(self, spec: GrammarSpec) -> None:
        """Fast check: keyword support and regex syntax (no token index is built)."""
        regex = self.regex_for(spec)
        if spec.kind in ("regex", "choice"):
            _check_regex_syntax(spec, regex)

    def compile(self, spec: GrammarSpec):
        """A factory of fresh matchers for `spec`; ValueError if outlines-core refuses it."""
        regex = self.regex_for(spec)
        if spec.kind in ("regex", "choice"):
            _check_regex_syntax(spec, regex)
        try:
            index = outlines_core.Index(regex, self.vocabulary())
        except Exception as e:  # noqa: BLE001
            field = spec.kind if spec.kind in ("regex", "choice") else "json"
            raise ParamError(f"structured_outputs.{field}", f"outlines cannot compile it ({e})") \
                from None
        return OutlinesMatcherFactory(
            _MaskTable(index, self.vocab_size, self.eos_token_ids, shared_store()))


def _check_regex_syntax(spec: GrammarSpec, regex: str) -> None:
    """Both backends parse Rust-regex syntax; llguidance's checker gives the clearer message."""
    grammar = llguidance.LLMatcher.grammar_from_regex(regex)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, None)
    if is_error:
        raise grammar_error(spec, messages[0] if messages else "invalid regex")


class OutlinesMatcherFactory:
    """Fresh matchers over one index; `table` (the index and its masks) is shared by all."""

    def __init__(self, table: _MaskTable) -> None:
        self.table = table

    def __call__(self) -> OutlinesMatcher:
        return OutlinesMatcher(self.table)


class _MaskTable:
    """One index's allowed-token lists and packed masks per state, computed lazily; shared
    by its matchers.

    Only `forced_tokens` and end checks at final states need the lists. A state's mask is
    written once by a matcher's native `Guide` and stored in `store` (a `Node` per state);
    later visits of the state copy it.
    """

    def __init__(self, index: outlines_core.Index, vocab_size: int,
                 eos_token_ids: Sequence[int], store: MaskStore) -> None:
        self.index = index
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        self.initial_state = index.get_initial_state()
        self.store = store
        self._nodes: dict[int, Node] = {}  # state -> its stored mask (if the store kept it)
        self._allowed: dict[int, list[int]] = {}
        self._lock = threading.Lock()

    def copy_mask(self, state: int, target: torch.Tensor) -> bool:
        """Copy the stored mask of `state` into `target` (one row); False when absent."""
        node = self._nodes.get(state)
        mask = node.mask if node is not None else None  # read once: the store may drop it
        if mask is None:
            return False
        target.copy_(torch.from_numpy(mask))
        self.store.hits += 1
        self.store.touch(node)
        return True

    def remember(self, state: int, row: torch.Tensor) -> None:
        """`row` is the complete mask of `state`: store it for later visits."""
        self.store.misses += 1
        if self.store.max_bytes <= 0:
            return
        node = self._nodes.get(state)
        if node is None:
            node = self._nodes.setdefault(state, Node())
        self.store.put(node, row)

    def allowed(self, state: int) -> list[int]:
        """Allowed token ids at `state` (EOS ids included where the regex may end)."""
        found = self._allowed.get(state)
        if found is None:
            found = [t for t in self.index.get_allowed_tokens(state) or []
                     if t not in self.eos_token_ids]
            if self.index.is_final_state(state):
                found.extend(self.eos_token_ids)
            with self._lock:
                self._allowed[state] = found
        return found


class OutlinesMatcher(Matcher):
    """A `Matcher` walking an outlines-core index; its state history allows rollback."""

    backend_name = "outlines"

    def __init__(self, table: _MaskTable) -> None:
        self._table = table
        self._states = [table.initial_state]  # state after each accepted token
        self._token_ids: list[int] = []  # accepted tokens, EOS excluded
        self._ended = False  # EOS accepted (it is the last entry of _states then)
        self._error: str | None = None
        self._guide = outlines_core.Guide(table.index, max_rollback=_GUIDE_ROLLBACK)

    def accept_token(self, token_id: int) -> bool:
        if self._error is not None:
            return False
        token_id = int(token_id)
        state = self._states[-1]
        table = self._table
        if self._ended:
            self._error = f"token {token_id} after the end of the grammar"
            return False
        if token_id in table.eos_token_ids:
            if not table.index.is_final_state(state):
                self._error = f"EOS token {token_id} before the grammar is complete"
                return False
            self._ended = True
            self._states.append(state)
            return True
        nxt = table.index.get_next_state(state, token_id)
        if nxt is None:
            self._error = f"token {token_id} is not allowed by the grammar"
            return False
        self._guide.advance(token_id, return_tokens=False)
        self._states.append(nxt)
        self._token_ids.append(token_id)
        return True

    def rollback(self, num_tokens: int) -> None:
        if num_tokens < 0 or num_tokens > len(self._states) - 1:
            raise ParamError(
                "num_tokens", f"cannot roll back {num_tokens} of {len(self._states) - 1} tokens")
        if num_tokens:
            num_guide = num_tokens - int(self._ended)
            del self._states[-num_tokens:]
            self._ended = False
            if num_guide:
                del self._token_ids[-num_guide:]
                if num_guide <= self._guide.get_allowed_rollback():
                    self._guide.rollback_state(num_guide)
                else:
                    self._guide = outlines_core.Guide(self._table.index,
                                                      max_rollback=_GUIDE_ROLLBACK)
                    for token_id in self._token_ids:
                        self._guide.advance(token_id, return_tokens=False)
        self._error = None

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        if self._error is not None or self._ended:
            fill_eos_only(bitmask[row], self._table.eos_token_ids)
            return
        target = bitmask[row]
        table, state = self._table, self._states[-1]
        if table.copy_mask(state, target):
            return
        self._guide.write_mask_into(target.data_ptr(), target.numel(), 4)
        if table.index.is_final_state(state):
            for token_id in table.eos_token_ids[1:]:  # the index knows one EOS id
                word, bit = divmod(token_id, 32)
                value = int(target[word]) | (1 << bit)
                target[word] = value - (1 << 32) if value >= 1 << 31 else value
        table.remember(state, target)

    def is_terminated(self) -> bool:
        if self._error is not None:
            return False
        if self._ended:
            return True
        state = self._states[-1]
        if not self._table.index.is_final_state(state):
            return False
        return all(t in self._table.eos_token_ids for t in self._table.allowed(state))

    def is_error(self) -> bool:
        return self._error is not None

    @property
    def error_message(self) -> str | None:
        return self._error

    def forced_tokens(self) -> list[int]:
        if self._error is not None or self._ended:
            return []
        forced: list[int] = []
        state = self._states[-1]
        table = self._table
        while len(forced) < 64 and not table.index.is_final_state(state):
            allowed = table.allowed(state)
            if len(allowed) != 1:
                break
            forced.append(allowed[0])
            state = table.index.get_next_state(state, allowed[0])
        return forced

    def can_end(self) -> bool:
        return self._error is None and not self._ended and \
            self._table.index.is_final_state(self._states[-1])

    def validate_tokens(self, token_ids: list[int]) -> int:
        if self._error is not None or self._ended:
            return 0
        index = self._table.index
        state = self._states[-1]
        count = 0
        for token_id in token_ids:
            if token_id in self._table.eos_token_ids:
                count += int(index.is_final_state(state))
                break
            state = index.get_next_state(state, int(token_id))
            if state is None:
                break
            count += 1
        return count

    @property
    def num_accepted(self) -> int:
        return len(self._states) - 1
