"""The mine step: mined/ shard s is candidates/ shard s under the mining rules (``gist_mining.mining.select``), read a
chunk at a time."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from gist_mining import workdir
from gist_mining.mask.settings import CHUNK
from gist_mining.mining import MINED_SCHEMA, MiningRules, select
from gist_mining.storage import AtomicParquetWriter


@dataclass
class MineStep:
    """The mine step (``gist_mining.executor.ShardStep``): mined/ shard s is candidates/ shard s under the rules."""

    shards: workdir.Shards
    candidates: workdir.Shards
    rules: MiningRules
    name: str = "mine"

    def open(self) -> None:
        return None

    def run(self, _state, s: int) -> None:
        candidates = self.candidates
        workdir.checked_file(candidates.path(s), candidates.record(s),
                             workdir.rebuild_command(candidates.work, "search").removesuffix(" --overwrite"))
        with AtomicParquetWriter(self.shards.path(s), MINED_SCHEMA) as out:
            for batch in pq.ParquetFile(candidates.path(s)).iter_batches(batch_size=CHUNK):
                out.write(select(pa.Table.from_batches([batch]), self.rules))

    def close(self, _state) -> None:
        pass
