"""OUT/batchgen.db: the job queue and its append-only migrations. No torch, no click."""

from batchgen.store.queue import DB_NAME, Store, now, row_to_job

__all__ = ["DB_NAME", "Store", "now", "row_to_job"]
