"""A small fake of the Personalize HTTP APIs on 127.0.0.1, for timeouts, 5xx,
throttling and recovery (neither moto nor LocalStack emulates these services)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakePersonalize:
    """Answers GetPersonalizedRanking, GetRecommendations (similar items, or a
    user's with `recommend`), PutEvents, PutItems and PutUsers.

    `mode` picks the behaviour: "ok", "slow" (answers after `delay` seconds),
    "error" (HTTP 500) or "throttle" (ThrottlingException). In "ok" mode a ranking
    reverses the candidates unless `rank(user_id, items) -> items` is set, and
    similar items are `similar`, or `similar_to(item_id) -> items` when set.
    """

    def __init__(self):
        self.mode = "ok"
        self.delay = 1.0
        self.requests: list[tuple[str, dict]] = []
        # (path, body, status) of every request answered, in order.
        self.responses: list[tuple[str, dict, int]] = []
        self.similar: list[str] = []
        self.rank = None
        self.similar_to = None
        # A user campaign: recommend(user_id, kind) -> item ids (the kind is the
        # filter's $ITEM_TYPE value, "" without a filter).
        self.recommend = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                fake.requests.append((self.path, body))
                self.body = body
                if fake.mode == "slow":
                    time.sleep(fake.delay)
                if fake.mode == "error":
                    return self.reply(500, {"message": "internal error"})
                if fake.mode == "throttle":
                    return self.reply(
                        400,
                        {"__type": "ThrottlingException", "message": "Rate exceeded"},
                        {"x-amzn-ErrorType": "ThrottlingException"},
                    )
                if self.path == "/personalize-ranking":
                    if fake.rank:
                        ranked = fake.rank(body["userId"], body["inputList"])
                    else:
                        ranked = list(reversed(body["inputList"]))
                    return self.reply(
                        200,
                        {
                            "personalizedRanking": [
                                {"itemId": item, "score": round(1 / (i + 1), 4)}
                                for i, item in enumerate(ranked)
                            ]
                        },
                    )
                if self.path == "/recommendations" and "userId" in body:
                    kind = json.loads(
                        body.get("filterValues", {}).get("ITEM_TYPE", '""')
                    )
                    found = (
                        fake.recommend(body["userId"], kind) if fake.recommend else []
                    )
                    return self.reply(
                        200,
                        {
                            "itemList": [
                                {"itemId": item, "score": round(1 / (i + 1), 4)}
                                for i, item in enumerate(found[: body["numResults"]])
                            ]
                        },
                    )
                if self.path == "/recommendations":
                    similar = (
                        fake.similar_to(body["itemId"])
                        if fake.similar_to
                        else fake.similar
                    )
                    return self.reply(
                        200, {"itemList": [{"itemId": i} for i in similar]}
                    )
                return self.reply(200, {})

            def reply(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                fake.responses.append((self.path, self.body, status))
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in (headers or {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting: that is the point of "slow"

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "FakePersonalize":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls(self, path: str) -> list[dict]:
        return [body for request_path, body in self.requests if request_path == path]

    def answered(self, path: str) -> list[tuple[str, dict, int]]:
        """Requests to `path` the fake answered, with the status it gave."""
        return [answer for answer in self.responses if answer[0] == path]
