"""Running a batch: the supervisor (signals, folder lock, runs row, progress, cleanup, summary), the job
loop, the local worker pool and Ray, and reproduce. The only layer that joins manifest, engine, outputs
and store."""
