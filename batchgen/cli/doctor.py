"""`batchgen doctor`: check this machine before a long batch."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from batchgen.cli.common import friendly


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder to check for space (and, if it holds a batch, the space its remaining jobs need).")
@click.option("--model", help="Model to check the cache for (default genmo/mochi-1-preview); 'tiny' or a folder work too.")
@click.option("--manifest", "manifest_path", type=click.Path(dir_okay=False, path_type=Path),
              help="A manifest whose model, transformer, variant and LoRAs to check (its model unless --model).")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@friendly
def doctor(out: Path | None, model: str | None, manifest_path: Path | None, as_json: bool) -> None:
    """Check CUDA, GPU memory, profiles, bitsandbytes, ffmpeg, Hugging Face login and cache, and disk.

    Exits 1 only when something blocks rendering altogether; warnings exit 0.
    """
    from batchgen.engine import doctor as checks_module

    manifest = None
    if manifest_path is not None:
        from batchgen.manifest.parse import load_manifest

        manifest = load_manifest(manifest_path)
        model = model or manifest.model
    checks = checks_module.run_checks(out, model)
    if manifest is not None:
        from batchgen.engine.doctor_checkpoints import check_manifest

        checks += check_manifest(manifest)
    click.echo(checks_module.as_json(checks) if as_json else checks_module.format_checks(checks))
    if checks_module.blocked(checks):
        if not as_json:
            click.echo("batchgen cannot render here until the FAIL lines above are fixed.", err=True)
        sys.exit(1)
