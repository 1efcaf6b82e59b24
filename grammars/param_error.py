"""`ParamError`: a request field that is wrong, with the field's name carried as data.

Every layer raises it where a value comes from the caller (a request, `SamplingParams`, a
schema, a tool); the API turns it into a 400 whose `param` is `ParamError.param`, and code
that re-labels a field (a constraint given as `response_format`) uses `renamed`.
"""

from __future__ import annotations


class ParamError(ValueError):
    """`param`: the field's dotted path (e.g. `structured_outputs.json`, `tools[0].function`);
    `detail`: what is wrong with it. `str()` reads "param: detail"."""

    def __init__(self, param: str, detail: str) -> None:
        super().__init__(f"{param}: {detail}")
        self.param = param
        self.detail = detail

    def __reduce__(self):  # pickled as its fields: it crosses process pools
        return type(self), (self.param, self.detail)

    def renamed(self, param: str) -> ParamError:
        """The same complaint about another field (where the caller named it so)."""
        return ParamError(param, self.detail)
