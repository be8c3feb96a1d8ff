"""Read and validate training pairs and extra corpus files, in row batches (memory holds a batch, never a file).

Pairs: Parquet, JSONL, CSV or a `datasets` dataset saved to disk, a folder or glob of such files, or a Hub
dataset (an id or an hf://datasets/ path, through the Hugging Face cache: ``input_files``), with columns for
the query and its positive, optional negatives (a string or a list of strings per column) and an optional
``task``; which columns are which is given (--columns) or recognised as sentence-transformers' data sets name
them (``resolve_columns``). Corpus files: the same forms with a ``text`` column. A retrieval layout (queries,
corpus and qrels as BEIR lays them out) becomes pairs and a corpus (``retrieval_pairs``). Every problem is
reported as one line naming the file, the row and what is wrong (``{path}: row {n}: ...``, or ``{path}: ...``
for the file as a whole); every row of a file is checked, and once a row of a text file does not parse, the
rows after it are only parsed.

Row n is the n-th data row, counted from 1: the n-th row of a Parquet file or dataset, the n-th record of
a JSONL file or the n-th record after the header of a CSV file (the header is not a row, blank lines are
not rows, and a quoted CSV field may span lines). Where a problem found while parsing a text file sits on
another line than its row number, the line is named too: ``row 3 (line 5)``.

Accepted on purpose:
- Exact duplicate rows are kept: a repeated pair is legitimate (it weighs that pair more), and the embed
  stage stores and embeds each distinct text once anyway.
- Texts have no length cap: a long document is legitimate and the model reads only its first
  max_seq_length tokens; each distinct text is stored once, so a 1 MB text costs about 1 MB.

The package's modules, each one concern: ``hub`` (what the user names: files, folders, globs, Hub datasets),
``files`` (the readers of each format), ``problems`` (one line per problem), ``checks`` (texts and negatives),
``columns`` (which column is which), ``pairs`` (pairs and corpus files, checked in batches), ``retrieval`` (BEIR
layouts) and ``medi`` (MEDI-shaped instructions). Their public names are this package's: ``inputs.NAME``.
"""

from __future__ import annotations

from gist_mining.inputs.checks import (BLANK, as_strings, check_distinct, check_negatives, check_texts,
                                       as_negative_lists, text_problem)
from gist_mining.inputs.columns import (NEGATIVE_NAMES, PAIR_CONVENTIONS, SLOTS, TASK_NAMES, describe_columns,
                                        parse_columns, resolve_columns)
from gist_mining.inputs.files import BATCH_ROWS, TEXT_READERS, data_file, data_suffix, table_batches
from gist_mining.inputs.hub import HUB_PATHS, HubSelection, hub_files, input_files
from gist_mining.inputs.pairs import DEFAULT_TASK, corpus_batches, pair_batches
from gist_mining.inputs.problems import MAX_PROBLEMS, Problems, describe_error, file_error
from gist_mining.inputs.retrieval import RETRIEVAL_ALIASES, RETRIEVAL_COLUMNS, retrieval_pairs, retrieval_tables
