"""Which columns are which: ``--columns`` or the names sentence-transformers' data sets use (``resolve_columns``)."""

from __future__ import annotations

import re
from pathlib import Path


from gist_mining.errors import UsageError
from gist_mining.inputs.problems import file_error


# Pairs as sentence-transformers' data sets name them, tried in order when --columns does not name them.
PAIR_CONVENTIONS = (("query", "positive"), ("anchor", "positive"), ("query", "answer"), ("question", "answer"),
                    ("sentence1", "sentence2"), ("query", "pos"))  # the last: MEDI's (gist_mining.inputs.medi)


NEGATIVE_NAMES = ("negative", "negatives", "neg")  # the first present; else negative_1 .. negative_n


TASK_NAMES = ("task", "task_name", "task_type")  # the first present; the last two: MEDI's


SLOTS = {"pairs": ("query", "positive", "negative", "task"), "corpus": ("text",)}


_NUMBERED_NEGATIVE = re.compile(r"negative_(\d+)")


def parse_columns(text: str | None) -> dict[str, str]:
    """``--columns query=question,positive=answer,negative=hard_negative,task=source`` as {slot: column}."""
    if not text:
        return {}
    slots = [r for kind in SLOTS.values() for r in kind]
    given = {}
    for item in text.split(","):
        slot, sep, column = (part.strip() for part in item.partition("="))
        if not sep or not column or slot not in slots:
            raise UsageError(f"--columns takes SLOT=COLUMN items separated by commas, SLOT one of {', '.join(slots)}; "
                             f"not {item!r}")
        given[slot] = column
    return given


def resolve_columns(path: Path, columns: list[str], kind: str, given: dict[str, str]) -> dict[str, list[str]]:
    """Which of a file's ``columns`` fill which slot ({slot: [column, ...]}; several only for negatives): those
    ``given`` (--columns), the rest as the project, sentence-transformers and MEDI name them (PAIR_CONVENTIONS;
    negatives NEGATIVE_NAMES, else ``negative_1`` .. ``negative_n``; the task TASK_NAMES)."""
    has = f"has: {', '.join(columns) or 'none'}"
    given = {slot: column for slot, column in given.items() if slot in SLOTS[kind]}
    for slot, column in given.items():
        if column not in columns:
            raise file_error(path, f"--columns takes '{column}' as {slot}, but there is no such column ({has})")
    taken = set(given.values())
    if kind == "corpus":
        if "text" not in given and "text" not in columns:
            raise file_error(path, f"missing column 'text' ({has}); name it with --columns text=COLUMN")
        return {"text": [given.get("text", "text")]}
    slots = {slot: [column] for slot, column in given.items()}
    if not {"query", "positive"} <= slots.keys():
        for query, positive in PAIR_CONVENTIONS:
            want = {"query": slots.get("query", [query])[0], "positive": slots.get("positive", [positive])[0]}
            if all(c in columns for c in want.values()) and want["query"] != want["positive"]:
                slots.update({slot: [column] for slot, column in want.items()})
                break
        else:
            raise file_error(path, f"no columns to take as query and positive ({has}); expected one of "
                                    f"{', '.join('/'.join(c) for c in PAIR_CONVENTIONS)}, or name them with "
                                    "--columns query=COLUMN,positive=COLUMN")
    taken |= {c for cs in slots.values() for c in cs}
    if "negative" not in slots:
        numbered = sorted((int(m.group(1)), c) for c in columns if (m := _NUMBERED_NEGATIVE.fullmatch(c)) and c not in taken)
        named = [c for c in NEGATIVE_NAMES if c in columns and c not in taken][:1]
        negatives = named or [c for _, c in numbered]
        if negatives:
            slots["negative"] = negatives
    task = next((c for c in TASK_NAMES if c in columns and c not in taken), None)
    if "task" not in slots and task:
        slots["task"] = [task]
    return slots


def describe_columns(slots: dict[str, list[str]]) -> str:
    """How the log says which columns were taken as what."""
    return ", ".join(f"{' + '.join(repr(c) for c in columns)} as {slot}" for slot, columns in slots.items())
