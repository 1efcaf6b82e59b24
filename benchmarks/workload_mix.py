"""A structured-output workload that looks like real traffic, drawn from public datasets.

Kinds, each a chat request with its own constraint:

- `json_schema`: schemas from every JSONSchemaBench split (those the engine's default
  backend compiles), the schema itself in the prompt (long prompts for large schemas);
- `tools`: BFCL questions with their function sets, `tool_choice` "required" and "auto",
  parallel calls allowed in the parallel categories;
- `json_object`: JSON mode;
- `regex`: dates, times, phone numbers, e-mail addresses, IPs, UUIDs, versions;
- `lark`: Lark grammars (arithmetic, a small SQL, a key=value config language).

Used by `structured_mix.py` and `speculative.py`. Reads data in place from
`../shared/datasets` next to the repository, or from `$CORRAL_DATASETS`.
"""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bfcl import to_tools

from corral.engine import StructuredOutputsParams
from corral.tools import render_chat_prompt, tool_call_constraint

MAX_SCHEMA_CHARS_IN_PROMPT = 6000
BFCL_FILES = ("BFCL_v4_simple_python.json", "BFCL_v4_multiple.json", "BFCL_v4_parallel.json",
              "BFCL_v4_parallel_multiple.json", "BFCL_v4_live_simple.json",
              "BFCL_v4_live_multiple.json", "BFCL_v4_live_parallel.json")

REGEXES = [
    ("When did the first Moon landing happen? Answer with the date.",
     r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"),
    ("What time is it in Tokyo at noon UTC? Answer HH:MM.", r"([01][0-9]|2[0-3]):[0-5][0-9]"),
    ("Give a US phone number for a pizza place.", r"\(\d{3}\) \d{3}-\d{4}"),
    ("Give an e-mail address for a support desk.",
     r"[a-z0-9._]{1,20}@[a-z0-9]{1,15}\.(com|org|net)"),
    ("Give the IPv4 address of a home router.",
     r"((25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])"),
    ("Make up a UUID for an order.",
     r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
    ("What is the latest version of your favourite library?",
     r"v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"),
    ("Rate the movie Alien from 1 to 5 and say why in a few words.", r"[1-5] - [A-Za-z ,.]{5,60}"),
]

LARK_GRAMMARS = [
    ("Write an arithmetic expression that equals 42.",
     'start: expr\nexpr: term (("+" | "-") term)*\nterm: factor (("*" | "/") factor)*\n'
     'factor: NUMBER | "(" expr ")"\nNUMBER: /[0-9]{1,6}/\n'),
    ("Write a SQL query listing the names of users older than 30.",
     'start: "SELECT " cols " FROM " NAME (" WHERE " cond)? ";"\ncols: NAME (", " NAME)* | "*"\n'
     'cond: NAME " " OP " " VALUE\nOP: "=" | ">" | "<" | ">=" | "<="\n'
     'NAME: /[a-z_][a-z0-9_]{0,20}/\nVALUE: /[0-9]{1,6}/ | /\'[a-zA-Z ]{0,20}\'/\n'),
    ("Write a config file for a web server with a host, a port and a debug flag.",
     'start: line+\nline: KEY "=" VALUE "\\n"\nKEY: /[a-z_]{1,16}/\n'
     'VALUE: /[0-9]{1,5}/ | "true" | "false" | /"[a-zA-Z0-9. ]{0,30}"/\n'),
]

JSON_OBJECT_ASKS = [
    "Describe a book you like as a JSON object.",
    "Give the weather forecast for Paris for three days, as JSON.",
    "List three cities with their populations as a JSON object.",
    "Return a JSON object describing a user profile.",
]


@dataclass
class MixItem:
    """One request of the mix: its kind, a name, chat messages and tools, the constraint."""

    kind: str
    name: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    constraint: StructuredOutputsParams

    def prompt(self, tokenizer: Any) -> str:
        return render_chat_prompt(tokenizer, self.messages, self.tools)


def compile_check(engine: Any) -> Any:
    """`compiles(constraint)` for `build_mix`: whether the engine's default backend compiles
    it (compiled grammars stay cached for the run)."""

    def compiles(constraint: StructuredOutputsParams) -> bool:
        try:
            engine.grammar.compile(constraint)
            return True
        except ValueError:
            return False

    return compiles


def datasets_dir() -> Path:
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"
    path = Path(os.environ.get("CORRAL_DATASETS", default))
    if not path.is_dir():
        raise SystemExit(f"datasets not found at {path} (set CORRAL_DATASETS)")
    return path


def jsonschemabench() -> list[tuple[str, str, dict]]:
    """(split, file, entry) for every sampled JSONSchemaBench file."""
    root = datasets_dir() / "jsonschemabench"
    entries = json.loads((root / "manifest.json").read_text())["entries"]
    return [(e["split"], e["file"], json.loads((root / e["file"]).read_text())) for e in entries]


def round_robin_by_split(bench: list[tuple[str, str, dict]], seed: int
                         ) -> Iterator[tuple[str, str, dict]]:
    """Entries alternating over splits (shuffled within each), until all are used."""
    rng = random.Random(seed)
    by_split: dict[str, list] = defaultdict(list)
    for entry in bench:
        by_split[entry[0]].append(entry)
    for entries in by_split.values():
        rng.shuffle(entries)
    splits = sorted(by_split)
    while any(by_split.values()):
        for split in splits:
            if by_split[split]:
                yield by_split[split].pop()


def schema_items(compiles, num_schemas: int, seed: int) -> list[MixItem]:
    """`num_schemas` schemas over every split that `compiles(constraint)` accepts."""
    items = []
    for split, name, entry in round_robin_by_split(jsonschemabench(), seed):
        if len(items) >= num_schemas:
            break
        constraint = StructuredOutputsParams(json=entry["schema"])
        if not compiles(constraint):
            continue
        text = json.dumps(entry["schema"], separators=(",", ":"))
        ask = (f"Reply with one JSON value that is valid against this JSON Schema:\n{text}"
               if len(text) <= MAX_SCHEMA_CHARS_IN_PROMPT else "Reply with one JSON value.")
        items.append(MixItem("json_schema", f"{split}/{Path(name).stem}",
                             [{"role": "user", "content": ask}], None, constraint))
    return items


def tool_items(compiles, num_items: int, seed: int) -> list[MixItem]:
    """BFCL questions with their tools, tool_choice alternating "required" and "auto"."""
    rng = random.Random(seed)
    entries = []
    for file in BFCL_FILES:
        path = datasets_dir() / "bfcl" / file
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rng.shuffle(lines)
        entries.extend((file, e) for e in lines[: num_items])
    rng.shuffle(entries)
    items = []
    for i, (file, entry) in enumerate(entries):
        if len(items) >= num_items:
            break
        tools = to_tools(entry["function"])
        choice = "required" if i % 2 == 0 else "auto"
        parallel = "parallel" in file
        try:
            constraint = tool_call_constraint(tools, choice, parallel)
        except ValueError:
            continue
        if constraint is None or not compiles(constraint):
            continue
        items.append(MixItem(f"tools_{choice}", f"{Path(file).stem}/{entry['id']}",
                             entry["question"][0], tools, constraint))
    return items


def simple_items() -> list[MixItem]:
    """JSON mode, regex and Lark requests."""
    items = [MixItem("json_object", f"json_object/{i}", [{"role": "user", "content": ask}],
                     None, StructuredOutputsParams(json_object=True))
             for i, ask in enumerate(JSON_OBJECT_ASKS)]
    items += [MixItem("regex", f"regex/{i}", [{"role": "user", "content": ask}], None,
                      StructuredOutputsParams(regex=pattern))
              for i, (ask, pattern) in enumerate(REGEXES)]
    items += [MixItem("lark", f"lark/{i}", [{"role": "user", "content": ask}], None,
                      StructuredOutputsParams(grammar=grammar))
              for i, (ask, grammar) in enumerate(LARK_GRAMMARS)]
    return items


def build_mix(compiles, num_schemas: int, num_tools: int, seed: int = 0) -> list[MixItem]:
    """The whole mix: schemas, tool calls, then JSON mode, regex and Lark."""
    return (schema_items(compiles, num_schemas, seed) + tool_items(compiles, num_tools, seed)
            + simple_items())
