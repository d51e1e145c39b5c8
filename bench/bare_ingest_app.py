"""The ceiling for tracking ingest: a bare Flask endpoint that inserts the same rows
as /personalization/track-interaction, with none of its validation or upkeep."""

import os

from flask import Flask, request
from sqlalchemy import create_engine, insert

from config import normalize_database_url
from models import UserInteraction, utcnow

app = Flask(__name__)
engine = create_engine(normalize_database_url(os.environ["DATABASE_URL"]))


@app.post("/ingest")
def ingest():
    events = request.get_json()["events"]
    rows = [
        {
            "user_id": "b" * 32,
            "session_id": "bench",
            "interaction_type": event["interaction_type"],
            "target_type": event["target_type"],
            "target_id": event["target_id"],
            "timestamp": utcnow(),
        }
        for event in events
    ]
    with engine.begin() as connection:
        connection.execute(insert(UserInteraction), rows)
    return {"accepted": len(rows)}, 202
