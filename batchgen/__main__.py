# The signal handlers first, before the imports: a kill during them is obeyed quietly (run/signals.py).
from batchgen.run.signals import install_for_cli

install_for_cli()

from batchgen.cli import main  # noqa: E402

main()
