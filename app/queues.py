"""The two queues. Fetch work and report work are kept apart so that a platform
outage (report retries piling up) never delays log reading, and each side can be
scaled on its own."""

from enum import StrEnum


class Queue(StrEnum):
    FETCH = "fetch"
    REPORT = "report"
