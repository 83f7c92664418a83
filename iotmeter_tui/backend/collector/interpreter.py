"""The interpreter settings of a process that runs a collector.

The collector allocates several container objects per message (the parsed data, its spool
record, the sinks' batches), and most of them live for seconds: the spool keeps the newest
records in memory for its readers. With CPython's default thresholds (700 allocations) every
one of them survives a young collection and is scanned again in the older generations: in
`bench/ingest.py` (20,000 msg/s for 20 s) the collector made 3,229 collections, and with
these thresholds 14, using 7 % less CPU (docs/performance.md, round five). Memory is freed by
reference counting all the same; only objects in reference cycles wait longer for theirs.
"""

from __future__ import annotations

import gc

# Young collections every 50,000 allocations instead of 700: short-lived objects die before
# any is scanned. The older generations follow at 20 and 100 times that.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_for_ingest() -> None:
    """Call once in a collector's own process, before it starts: its start-up objects (the
    modules, the settings) leave the collected generations for good, and collections come
    less often."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
