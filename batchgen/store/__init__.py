"""OUT/batchgen.db: the job queue, its append-only migrations, and read-only access for the other layers.
No torch, no click."""

from batchgen.store.queue import DB_NAME, Store, now, row_to_job

__all__ = ["DB_NAME", "Store", "now", "row_to_job"]
