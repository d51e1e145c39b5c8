"""CPU time per request, in process (Flask's test client: no network, no other
process), for the app of one source tree on an existing database: the steadiest
cost figure on a noisy machine, used by bench/compare_revisions.py.

    .venv/bin/python bench/request_cpu.py TREE DATABASE_URL VISITOR_COOKIE PATH...

Prints JSON {path: ms}: the least CPU ms per request over 5 runs of 200.
REQUESTS=N makes it one run of N requests after one warm-up request, for counting
instructions under valgrind (compare_revisions.py --instructions).
"""

import json
import os
import sys
import time

RUNS, REQUESTS, WARM_UP = 5, 200, 50
if os.environ.get("REQUESTS"):
    RUNS, REQUESTS, WARM_UP = 1, int(os.environ["REQUESTS"]), 1


def main() -> None:
    tree, database_url, cookie, *paths = sys.argv[1:]
    sys.path.insert(0, tree)
    os.chdir(tree)
    from app import create_app

    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})
    client = app.test_client()
    client.set_cookie("antidote_visitor", cookie)
    found = {}
    for path in paths:
        for _ in range(WARM_UP):
            assert client.get(path).status_code == 200, path
        runs = []
        for _ in range(RUNS):
            started = time.process_time()
            for _ in range(REQUESTS):
                client.get(path)
            runs.append((time.process_time() - started) / REQUESTS * 1000)
        found[path] = min(runs)
    print(json.dumps(found))


if __name__ == "__main__":
    main()
