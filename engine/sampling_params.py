"""Per-request sampling parameters, validated in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from corral.grammars.param_error import ParamError
from corral.grammars.params import StructuredOutputsParams

_GREEDY_EPS = 1e-5


@dataclass
class SamplingParams:
    """How to sample one request's completions.

    temperature 0 is greedy. `seed` makes sampling reproducible per request whatever else
    is in the batch. `stop` strings end a completion and are left out of its text.
    `logprobs` is the number of top log-probabilities to return per token (0 = only the
    sampled token's). `logits_processors` are user callables or `LogitsProcessor` objects
    (see `corral.engine.logits_process`) applied to this request's rows only.
    `fast_forward` (None: the engine's setting) drafts the tokens a grammar forces;
    `speculative=False` opts this request out of n-gram drafts.
    `close_structures` (on by default) steers a constrained output to the shortest valid
    end of its grammar as it nears `max_tokens`, so that it always parses; where no end
    fits the tokens left, it stops at once with finish_reason "length".
    `detokenize=False` returns token ids only (the text stays empty); stop strings need
    the text, so they need `detokenize`.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    logprobs: int | None = None
    structured_outputs: StructuredOutputsParams | None = None
    fast_forward: bool | None = None
    speculative: bool | None = None
    close_structures: bool = True
    skip_special_tokens: bool = True
    detokenize: bool = True
    logits_processors: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        self._validate()

    def _validate(self) -> None:
        def check(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ParamError(name, f"{what} (got {getattr(self, name)!r})")

        check(isinstance(self.n, int) and 1 <= self.n <= 128, "n", "must be an integer in 1..128")
        check(
            _is_number(self.temperature) and 0.0 <= self.temperature <= 2.0,
            "temperature",
            "must be in [0, 2]",
        )
        check(_is_number(self.top_p) and 0.0 < self.top_p <= 1.0, "top_p", "must be in (0, 1]")
        check(
            isinstance(self.top_k, int) and self.top_k >= 0,
            "top_k",
            "must be a non-negative integer (0 = off)",
        )
        check(_is_number(self.min_p) and 0.0 <= self.min_p <= 1.0, "min_p", "must be in [0, 1]")
        check(self.seed is None or isinstance(self.seed, int), "seed", "must be an integer")
        check(
            self.max_tokens is None or (isinstance(self.max_tokens, int) and self.max_tokens >= 1),
            "max_tokens",
            "must be a positive integer",
        )
        check(
            isinstance(self.min_tokens, int) and self.min_tokens >= 0,
            "min_tokens",
            "must be a non-negative integer",
        )
        if self.max_tokens is not None:
            check(self.min_tokens <= self.max_tokens, "min_tokens", "must not exceed max_tokens")
        check(all(isinstance(s, str) and s for s in self.stop), "stop", "must be non-empty strings")
        check(len(self.stop) <= 16, "stop", "at most 16 stop strings")
        check(self.detokenize is True or self.detokenize is False, "detokenize",
              "must be a boolean")
        check(self.detokenize or not self.stop, "stop", "stop strings need detokenize=True")
        check(
            all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
            "stop_token_ids",
            "must be non-negative integers",
        )
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            check(_is_number(value) and -2.0 <= value <= 2.0, name, "must be in [-2, 2]")
        check(
            _is_number(self.repetition_penalty) and self.repetition_penalty > 0,
            "repetition_penalty",
            "must be positive",
        )
        if self.logit_bias is not None:
            check(isinstance(self.logit_bias, dict), "logit_bias", "must map token ids to biases")
            fixed = {}
            for key, bias in self.logit_bias.items():
                try:
                    token_id = int(key)
                except (TypeError, ValueError):
                    raise ParamError("logit_bias", f"key {key!r} is not a token id") from None
                if not _is_number(bias) or not -100 <= bias <= 100:
                    raise ParamError("logit_bias", f"bias for {key!r} must be in [-100, 100]")
                if token_id < 0:
                    raise ParamError("logit_bias", f"token id {key!r} is negative")
                fixed[token_id] = float(bias)
            self.logit_bias = fixed
        check(
            self.logprobs is None or (isinstance(self.logprobs, int) and 0 <= self.logprobs <= 20),
            "logprobs",
            "must be an integer in 0..20",
        )
        check(
            self.structured_outputs is None
            or isinstance(self.structured_outputs, StructuredOutputsParams),
            "structured_outputs",
            "must be a StructuredOutputsParams",
        )
        check(isinstance(self.logits_processors, list), "logits_processors", "must be a list")
        for name in ("fast_forward", "speculative"):
            check(getattr(self, name) is None or isinstance(getattr(self, name), bool), name,
                  "must be a boolean or None")
        check(isinstance(self.close_structures, bool), "close_structures", "must be a boolean")

    @property
    def is_greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS

    def clone(self, **changes: Any) -> SamplingParams:
        """A copy with some fields changed (validated again)."""
        values = {f: getattr(self, f) for f in self.__dataclass_fields__}
        values.update(changes)
        return SamplingParams(**values)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
