"""Access-log files for the file source's tests: a writer that behaves like Traefik's
(``O_APPEND``, keeps writing to a renamed file until it reopens its log, as on USR1),
logrotate's two rotations, and the checks that tell a file source is at the end."""

from __future__ import annotations

import glob
import os
import shutil
import threading
from pathlib import Path

from app.filesource import identity_of
from app.ledger import Ledger
from app.model import FileCursor


class AccessLog:
    """Traefik's access log at ``path``: opened ``O_APPEND`` (as Traefik's
    ``openAccessLogFile`` does), so after a truncation it writes at the new end."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.lock = threading.Lock()
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, data: bytes) -> None:
        with self.lock:
            os.write(self.fd, data)

    def lines(self, lines: list[bytes]) -> None:
        self.write(b"".join(line + b"\n" for line in lines))

    def reopen(self) -> None:
        """What Traefik does on USR1: close the file it writes to, open ``path`` again."""
        with self.lock:
            os.close(self.fd)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def rename_rotate(self, keep: int = 5) -> None:
        """logrotate without copytruncate: shift ``path.N`` up and rename ``path`` to
        ``path.1``. The writer goes on writing to the renamed file until ``reopen``."""
        with self.lock:
            shift(self.path, keep)
            os.rename(self.path, self.path + ".1")

    def copytruncate(self, keep: int = 5, between=None) -> None:
        """logrotate's copytruncate: copy ``path`` to ``path.1``, then truncate ``path``.
        ``between()`` runs between the two (without the writer's lock: lines it writes
        there are lost, as logrotate documents)."""
        if between is None:
            with self.lock:  # nothing is written between the copy and the truncate
                shift(self.path, keep)
                shutil.copyfile(self.path, self.path + ".1")
                os.truncate(self.path, 0)
            return
        with self.lock:
            shift(self.path, keep)
            shutil.copyfile(self.path, self.path + ".1")
        between()
        with self.lock:
            os.truncate(self.path, 0)

    def close(self) -> None:
        with self.lock:
            os.close(self.fd)


def shift(path: str, keep: int) -> None:
    for n in range(keep, 0, -1):
        if os.path.exists(f"{path}.{n}"):
            os.rename(f"{path}.{n}", f"{path}.{n + 1}")


def complete_size(path: str) -> int:
    """Bytes up to and including the file's last newline."""
    data = Path(path).read_bytes()
    return data.rfind(b"\n") + 1


def files_at_end(ledger: Ledger, pattern: str) -> bool:
    """Every identified file matching ``pattern`` has its cursor at or after its last
    complete line (a copy shorter than the cursor holds nothing unread)."""
    need: dict[str, int] = {}
    for path in glob.glob(pattern):
        if path.endswith(".gz"):
            continue
        data = Path(path).read_bytes()
        identity = identity_of(data[:65536])
        if identity is None:
            continue
        need[identity] = max(need.get(identity, 0), data.rfind(b"\n") + 1)
    cursors = ledger.cursors()
    for identity, size in need.items():
        cursor = FileCursor.decode(cursors.get(FileCursor.field(identity), ""))
        if (cursor.offset if cursor else 0) < size:
            return False
    return True


def ledger_totals(ledger: Ledger) -> dict[str, dict[str, int]]:
    """Everything committed to the ledger's interval hashes, per subdomain."""
    total: dict[str, list[int]] = {}
    for key in ledger.r.scan_iter(match=ledger.k("iv", "*")):
        start = int(key.decode().rsplit(":", 1)[1])
        for sub, values in ledger.interval_totals(start).items():
            slot = total.setdefault(sub, [0, 0, 0])
            for i in range(3):
                slot[i] += values[i]
    return {s: {"bytes_in": v[0], "bytes_out": v[1], "requests": v[2]} for s, v in total.items()}
