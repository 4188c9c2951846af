"""The ``cgctl`` entry point: the console script and ``python -m cgctl``.

The cyclic garbage collector is turned off before anything else is imported. A one-shot command imports
~150 modules and then allocates ~100 objects per group without making garbage cycles worth collecting;
the collector's passes over the growing heap cost ~8 ms of the imports and up to 150 ms of a 1000-group
apply (bench/RESULTS.md). Reference counting still frees everything. ``cli.main`` turns the collector
back on for the long-running agent.
"""

from __future__ import annotations

import gc


def main() -> int:
    gc.disable()
    from cgctl.cli import main as cli_main

    return cli_main()
