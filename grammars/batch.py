"""Accepting one token per matcher for a whole batch in native batched calls.

llguidance matchers go through one `LLExecutor.consume_token_par` call and xgrammar matchers
through one `BatchGrammarMatcher.batch_accept_token` call (both native, without the GIL);
other matchers accept their token one by one. The wrappers' own bookkeeping (accepted-token
counts, error states) ends exactly as `accept_token` row by row would leave it.
"""

from __future__ import annotations

from collections.abc import Sequence

import xgrammar

from corral.grammars.grammar_threads import grammar_threads, mask_executor
from corral.grammars.llguidance_backend import LLGuidanceMatcher
from corral.grammars.matcher import Matcher
from corral.grammars.param_error import ParamError
from corral.grammars.xgrammar_matcher import XGrammarMatcher


def accept_tokens(matchers: Sequence[Matcher], token_ids: Sequence[int]) -> list[bool]:
    """Advance `matchers[i]` past `token_ids[i]` for every i; per matcher, whether allowed.

    The same matcher must not appear twice (its rows would race).
    """
    if len(matchers) != len(token_ids):
        raise ParamError("token_ids", f"{len(token_ids)} tokens for {len(matchers)} matchers")
    results = [False] * len(matchers)
    llg_rows: list[int] = []
    llg_pairs: list[tuple] = []  # (llguidance matcher, token) for one native call
    unrecorded: set[int] = set()  # llg rows whose token is an EOS the matcher keeps no entry of
    xgr: list[tuple[int, XGrammarMatcher, int]] = []  # (row, matcher, token)
    for i, (matcher, token_id) in enumerate(zip(matchers, token_ids, strict=True)):
        if type(matcher) is LLGuidanceMatcher:
            inner = matcher.inner
            if inner.is_error():
                continue  # refuses every token (llguidance itself may take an EOS)
            if token_id in matcher.eos_token_ids and inner.is_stopped():
                unrecorded.add(i)
            llg_rows.append(i)
            llg_pairs.append((inner, token_id))
        elif isinstance(matcher, XGrammarMatcher):
            verdict = matcher.pre_accept(token_id)
            if verdict is None:
                xgr.append((i, matcher, token_id))
            else:
                results[i] = verdict
        else:
            results[i] = matcher.accept_token(token_id)
    if len(llg_rows) == 1 or (llg_rows and grammar_threads() == 1):
        for i in llg_rows:
            results[i] = matchers[i].accept_token(token_ids[i])
    elif llg_rows:
        verdicts = mask_executor().consume_token_par(llg_pairs)
        LLGuidanceMatcher.accepted_rows(matchers, token_ids, llg_rows, verdicts, unrecorded)
        for i, ok in zip(llg_rows, verdicts, strict=True):
            results[i] = ok
    if xgr:
        verdicts = xgrammar.BatchGrammarMatcher.batch_accept_token(
            [m.inner for _, m, _ in xgr], [t for _, _, t in xgr])
        for (i, matcher, token_id), ok in zip(xgr, verdicts, strict=True):
            results[i] = matcher.post_accept(token_id, ok)
    return results
