"""Running a batch: the in-process job loop (supervisor.py), the local worker pool, Ray, and reproduce.
The only layer that joins manifest, engine, outputs and store. The pool and Ray still repeat part of the
supervisor's lifecycle (signals, lock, runs row, cleanup); issue 14 makes it one."""
