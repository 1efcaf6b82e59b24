"""Agreement counters for feeding schema test instances to matchers (shared by dataset tests)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from .instances import compact, feed, ordered_like_schema

SLOW_OUTLINES_REGEX_CHARS = 2000  # outlines-core indexes take seconds past this (49k vocab)
SLOW_OUTLINES_REPEAT = 64  # ... or with a bounded repetition past this ({1,512} takes ~20 s)


@dataclass
class Agreement:
    """Counts per backend: schemas compiled / refused / timed out; instances by outcome."""

    counts: Counter = field(default_factory=Counter)
    refusals: Counter = field(default_factory=Counter)  # refusal reason (keyword) -> count
    unsound: list = field(default_factory=list)  # invalid instances the matcher accepted

    def feed_tests(self, compiled, schema, tests, tokenizer, eos_id: int, where: str) -> None:
        for test in tests:
            instance = ordered_like_schema(test["data"], schema, schema)
            ids = tokenizer.encode(compact(instance), add_special_tokens=False)
            accepted = feed(compiled.matcher(), ids, eos_id).is_accepted
            if test["valid"]:
                self.counts["valid_accepted" if accepted else "valid_rejected"] += 1
            else:
                self.counts["invalid_accepted" if accepted else "invalid_rejected"] += 1
                if accepted:
                    self.unsound.append((where, test.get("description", "")))

    @property
    def agreement(self) -> float:
        c = self.counts
        agreed = c["valid_accepted"] + c["invalid_rejected"]
        total = agreed + c["valid_rejected"] + c["invalid_accepted"]
        return agreed / total if total else 1.0

    def summary(self) -> str:
        c = self.counts
        return (f"compiled {c['compiled']}/{c['schemas']} (refused {c['refused']}, timed out "
                f"{c['timed_out']}); valid accepted {c['valid_accepted']}/"
                f"{c['valid_accepted'] + c['valid_rejected']}; invalid rejected "
                f"{c['invalid_rejected']}/{c['invalid_rejected'] + c['invalid_accepted']}; "
                f"agreement {self.agreement:.1%}")


def is_slow_for_outlines(compiler, spec) -> bool:
    """True when outlines-core would take seconds to index the schema (kept out of CPU tests)."""
    try:
        regex = compiler._outlines.regex_for(compiler.resolve(spec))
    except ValueError:
        return False
    bounds = [int(n) for n in re.findall(r"\{(\d+)(?:,(\d*))?\}", regex) for n in n if n]
    return len(regex) > SLOW_OUTLINES_REGEX_CHARS or any(b > SLOW_OUTLINES_REPEAT for b in bounds)
