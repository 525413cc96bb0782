"""CPU time of ``translate()`` over the shared corpus: the translator's own cost, no I/O.

    python -m bench.corpus_cpu                  # this checkout
    python -m bench.corpus_cpu /path/to/other   # another checkout's relay/, to compare

Prints the median and the minimum process CPU time of one pass over every corpus message
(15 passes after a warm-up); the minimum is the steadier figure on a shared machine.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from pathlib import Path

PASSES = 15


def main() -> None:
    if len(sys.argv) > 1:
        sys.path.insert(0, sys.argv[1])
    from relay import translate  # noqa: PLC0415 (after choosing the checkout)
    from relay.errors import PermanentError  # noqa: PLC0415
    from tests.paths import CORPUS  # noqa: PLC0415

    raws = [p.read_bytes() for p in sorted(CORPUS.rglob("*")) if p.is_file() and p.suffix != ".md"]

    def one_pass() -> float:
        started = time.process_time()
        for raw in raws:
            with contextlib.suppress(PermanentError):
                translate(raw, "s@example.com", ["r@example.com"])
        return time.process_time() - started

    one_pass()
    runs = [one_pass() for _ in range(PASSES)]
    source = Path(sys.modules["relay"].__file__ or "").parent.parent
    print(
        f"{source}: {len(raws)} messages, CPU per pass median "
        f"{statistics.median(runs) * 1000:.0f} ms, min {min(runs) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
