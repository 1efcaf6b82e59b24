"""Register a Lark grammar over HTTP, then constrain requests by its name.

`POST /v1/grammars` compiles and validates the grammar once (a bad one gets a 400 naming
the line and column); requests then pass `structured_outputs: {"grammar_name": ...}`.
"""

from __future__ import annotations

import httpx
from _client import API_KEY, BASE_URL, client, model_name

SQL_SELECT = r"""
start: "SELECT " columns " FROM " NAME where? ";"
columns: "*" | NAME (", " NAME)*
where: " WHERE " NAME " " OP " " value
OP: "=" | "<" | ">"
value: NUMBER | "'" /[a-z ]{1,20}/ "'"
NAME: /[a-z_]{1,16}/
NUMBER: /[0-9]{1,6}/
"""


def main() -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    r = httpx.post(f"{BASE_URL}/grammars", headers=headers,
                   json={"name": "sql_select", "syntax": "lark", "definition": SQL_SELECT})
    r.raise_for_status()
    print("registered:", [g["name"] for g in
                          httpx.get(f"{BASE_URL}/grammars", headers=headers).json()["data"]])

    c = client()
    response = c.chat.completions.create(
        model=model_name(c),
        messages=[{"role": "user",
                   "content": "Write an SQL query for the names of users older than 30."}],
        max_tokens=60,
        temperature=0,
        extra_body={"structured_outputs": {"grammar_name": "sql_select"}},
    )
    print("query:", response.choices[0].message.content)

    bad = httpx.post(f"{BASE_URL}/grammars", headers=headers,
                     json={"name": "broken", "syntax": "lark", "definition": "start: ( x\n"})
    print("a bad grammar is refused:", bad.status_code, bad.json()["error"]["message"])
    httpx.delete(f"{BASE_URL}/grammars/sql_select", headers=headers).raise_for_status()


if __name__ == "__main__":
    main()
