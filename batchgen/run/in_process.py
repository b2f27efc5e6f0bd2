"""The runner that renders in this process: one pipeline, loaded once, every pending job through it."""

from __future__ import annotations

from batchgen.run.context import RunContext
from batchgen.run.job_loop import work_loop


class InProcessRunner:
    def __init__(self, renderer_factory=None):
        self.renderer_factory = renderer_factory
        self.renderer = None

    def notes(self) -> list[str]:
        return []

    def start(self, ctx: RunContext) -> None:
        """Load the pipeline and encode every pending text; nothing is rendered yet, so the CLI's signal
        handler may end the process at once here."""
        from batchgen.engine.renderer import Renderer

        manifest = ctx.manifest
        self.renderer = renderer = (self.renderer_factory or Renderer)(
            manifest.model,
            revision=manifest.revision,
            profile=ctx.choice.name,
            quality=manifest.quality,
            device=ctx.choice.device,
            cache_dir=ctx.out / "cache" / "embeddings",
            progress=ctx.show_bars,
            approximate=manifest.approximate,
            checkpoint=manifest.checkpoint,
        )
        renderer.on_phase = ctx.progress.phase  # loading, encoding, placing: a line each in lines mode
        renderer.encode(ctx.store.pending_texts(model=ctx.model, precision=ctx.precision, checkpoint=ctx.checkpoint))
        _warn_long_prompts(renderer, ctx)

    def run(self, ctx: RunContext) -> None:
        work_loop(ctx.out, ctx.store, self.renderer, model=ctx.model, precision=ctx.precision, checkpoint=ctx.checkpoint,
                  summary=ctx.summary,
                  log=ctx.log, bar=ctx.progress, signals=ctx.signals)


def _warn_long_prompts(renderer, ctx: RunContext) -> None:
    limit = renderer.load().max_sequence_length
    for row in ctx.store.rows("pending"):
        if row["model"] != ctx.model or row["precision"] != ctx.precision:
            continue
        n = renderer.count_tokens(row["prompt"])
        if n > limit:
            ctx.log(f"batchgen: warning: {row['source']} (job {row['job_id']}): prompt is {n} tokens; "
                    f"T5 reads only the first {limit}")
