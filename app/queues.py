"""The two queues. Fetch work and report work are kept apart so that a platform
outage (report retries piling up) never delays log reading, and each side can be
scaled on its own."""

from enum import StrEnum


class Queue(StrEnum):
    FETCH = "fetch"
    REPORT = "report"


# Sent by name from outside the workers (the ``replay`` command), so that ``app/``
# never imports ``workers/``. The task-name snapshot test checks it is registered.
REPORT_TASK = "workers.report.report"
