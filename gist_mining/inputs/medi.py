"""Instructions in MEDI-shaped pairs (INSTRUCTOR's MEDI, GISTEmbed's ``medi-data-mteb_avs_triplets``), recognised
without options: each text either with its instruction in a column beside it (``query`` and ``query_instruct``,
``pos`` and ``pos_instruct``, ``neg`` and ``neg_instruct``) or as MEDI's JSON writes it, an ``[instruction, text]``
pair in the text's own column.

The GIST models were trained without the instructions (the paper strips them; its models need none), so by default
they are dropped, said in one line; ``--instructions prepend`` puts each before its text instead (joined by a space
unless the instruction ends in whitespace), as INSTRUCTOR-style models read them.
"""

from __future__ import annotations

import polars as pl

from gist_mining.inputs.checks import text_problem

MODES = ("drop", "prepend")
SUFFIX = "_instruct"  # the instruction column of a text column COLUMN is COLUMN_instruct
TEXT_SLOTS = ("query", "positive", "negative")
# Keys resolve_columns' slots get for them: the instruction columns beside the texts, or the text columns that hold
# [instruction, text] pairs. Not --columns slots: they follow from the text columns.
BESIDE, PAIRED = "instructions", "[instruction, text] pairs"
_STAND_IN = "-"


def instruction_slots(frame: pl.DataFrame, slots: dict[str, list[str]]) -> dict[str, list[str]]:
    """``slots`` (inputs.resolve_columns') with the instructions found in the first frame of a pairs file: the text
    columns holding [instruction, text] pairs when the query column holds lists (MEDI's JSON), else the
    ``COLUMN_instruct`` columns of the text columns."""
    texts = [c for slot in TEXT_SLOTS for c in slots.get(slot, [])]
    query = frame.get_column(slots["query"][0])
    first = None if query.dtype == pl.String else next((v for v in query.to_list() if v is not None), None)
    if isinstance(first, (list, pl.Series)):
        return {**slots, PAIRED: texts}
    beside = [c + SUFFIX for c in texts if c + SUFFIX in frame.columns]
    return {**slots, BESIDE: beside} if beside else slots


def describe(slots: dict[str, list[str]], mode: str) -> str:
    """What the log adds to the columns line: what becomes of the instructions."""
    if BESIDE not in slots and PAIRED not in slots:
        return ""
    if mode == "prepend":
        return "; each instruction prepended to its text (--instructions prepend)"
    return "; instructions dropped, as the GIST models were trained (--instructions prepend keeps them)"


def with_instructions(problems, frame: pl.DataFrame, first_row: int, slots: dict[str, list[str]],
                      mode: str) -> pl.DataFrame:
    """The frame with plain texts in its text columns: [instruction, text] pairs split, each instruction dropped
    or prepended (``mode``). A pair that is not two strings, or an instruction that is not a string, is a row
    problem (``problems.add``); the checks of the texts themselves follow (gist_mining.inputs.pairs)."""

    paired, beside = slots.get(PAIRED, []), slots.get(BESIDE, [])
    if not paired and not beside:
        return frame
    replaced = {}
    for column in paired or [c.removesuffix(SUFFIX) for c in beside]:
        if not paired and mode == "drop" and frame.get_column(column + SUFFIX).dtype == pl.String:
            continue  # strings or nulls: nothing to check, nothing to change
        values = frame.get_column(column).to_list()
        instructions = [None] * len(values) if paired else frame.get_column(column + SUFFIX).to_list()
        texts = []
        for i, (value, instruction) in enumerate(zip(values, instructions)):
            if paired and value is not None:
                pair = list(value)
                if len(pair) != 2 or not all(isinstance(part, str) for part in pair):
                    problems.add(f"column '{column}' is {_shown(pair)}, expected [instruction, text] as in MEDI",
                                 first_row + i)
                    # A stand-in that passes the text checks: the row's problem is named, and a file with
                    # problems yields nothing.
                    texts.append(_STAND_IN)
                    continue
                instruction, value = pair
            elif instruction is not None and text_problem(instruction) not in (None, "empty"):
                problems.add(f"column '{column}{SUFFIX}' is {text_problem(instruction)}", first_row + i)
            texts.append(_joined(instruction, value) if mode == "prepend" else value)
        plain = all(t is None or isinstance(t, str) for t in texts)
        replaced[column] = pl.Series(column, texts, dtype=pl.String if plain else pl.Object)
    return frame.with_columns(replaced.values())


def _joined(instruction, text):
    """The instruction before the text (before each, for a list of negatives)."""
    if not isinstance(instruction, str) or not instruction.strip() or text is None:
        return text
    if isinstance(text, list):
        return [_joined(instruction, t) for t in text]
    if not isinstance(text, str):
        return text  # the text's own check names it
    return instruction + text if instruction[-1].isspace() else f"{instruction} {text}"


def _shown(value: list) -> str:
    return f"a list of {len(value)}" if len(value) != 2 else f"[{', '.join(type(v).__name__ for v in value)}]"
