"""Per-batch cost of the database molecule ledger (molvae/optimize/ledger_db.py): the four
transactions one worker's search loop runs per batch (check, claim, record, release), for
batches of 16 new molecules.

    python scripts/bench_ledger.py postgresql://user@host/db      # or sqlite:///bench.db

It writes a study named ``bench<time>`` into that database.
"""

import sys
import time

import pandas as pd

from molvae.optimize.ledger_db import DbMoleculeLog

COLUMNS = ["oracle_call", "smiles", "score", "feasible", "qed_raw", "trial", "batch", "worker", "seconds"]


def main(url: str, batches: int = 100, size: int = 16) -> None:
    log = DbMoleculeLog(url, f"bench{int(time.time())}", None, COLUMNS, ["score"])
    t0 = time.perf_counter()
    for b in range(batches):
        smiles = [f"C{'C' * (b % 50)}N{i}x{b}" for i in range(size)]  # unique strings, never parsed
        with log.lock():
            log.sync()
            log.read_claims()
        with log.lock():
            log.sync()
            log.read_claims()
            log.claim(smiles, list(range(b * size, (b + 1) * size)))
        table = pd.DataFrame({"smiles": smiles, "score": [0.5] * size, "feasible": [True] * size,
                              "qed_raw": [0.5] * size})
        with log.lock():
            log.sync()
            log.append(table, {"trial": 0, "batch": b, "worker": 0, "seconds": 0.0})
            log.release()
    dt = time.perf_counter() - t0
    log.close()
    print(f"{batches} batches of {size}: {dt / batches * 1000:.1f} ms per batch, "
          f"{dt / (batches * size) * 1000:.2f} ms per molecule")


if __name__ == "__main__":
    main(sys.argv[1])
