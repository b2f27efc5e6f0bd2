"""User-facing errors: the CLI prints these as one paragraph and exits non-zero, without a traceback."""


class BatchgenError(Exception):
    """An error whose message is written for the user; exit code 2 unless a subclass says otherwise."""

    exit_code = 2


class ManifestError(BatchgenError):
    """One or more problems in a manifest, each naming file, line/row and field."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class ModelLoadError(BatchgenError):
    """The model could not be loaded (missing, gated, not cached offline)."""


class StoreError(BatchgenError):
    """The output folder's database is unusable (corrupt, foreign, locked by another run)."""
