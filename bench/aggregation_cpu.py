"""CPU time the aggregator spends per tracked batch of 10 clicks, in process, for
the app of one source tree on an existing database (one prepared by
bench/http_load.py's prepare): the drain's share of what tracking costs a server,
measured without HTTP or other processes. Used by bench/compare_revisions.py.

    .venv/bin/python bench/aggregation_cpu.py TREE DATABASE_URL

Each run logs BATCHES batches from 100 visitors new to the database (as the
tracking benchmark's, one click per procedure of a sliding window), then drains
them all; prints JSON {"aggregator CPU ms per 10 events": least over RUNS runs}.
The database server's own CPU (PostgreSQL) is not counted.
"""

import json
import os
import sys
import time
import uuid

RUNS, BATCHES, VISITORS = 3, 1000, 100


def main() -> None:
    tree, database_url = sys.argv[1:]
    sys.path.insert(0, tree)
    os.chdir(tree)
    from sqlalchemy import select

    from app import create_app
    from models import Procedure, db
    from personalization.events import Interaction, ItemKey, VisitorInteraction

    # Not TESTING: requests log, and the background aggregator (not started
    # here: no request comes) would fold in, as on a server.
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        system = app.extensions["personalization"]
        system.aggregate_inline = False
        procedures = db.session.scalars(select(Procedure.id).order_by(Procedure.id))
        procedures = list(procedures)
        system.aggregate()  # whatever an earlier run or server left
        runs = []
        for _ in range(RUNS):
            visitors = [uuid.uuid4().hex for _ in range(VISITORS)]
            for number in range(BATCHES):
                start = (number * 3) % max(1, len(procedures) - 10)
                system.record(
                    [
                        VisitorInteraction(
                            visitors[number % VISITORS],
                            "bench",
                            Interaction("click", ItemKey("procedure", procedure)),
                        )
                        for procedure in procedures[start : start + 10]
                    ]
                )
            started = time.process_time()
            system.aggregate()
            runs.append((time.process_time() - started) / BATCHES * 1000)
    print(json.dumps({"aggregator CPU ms per 10 events": min(runs)}))


if __name__ == "__main__":
    main()
