"""A workaround for a crash of kombu's Redis transport when the broker restarts.

Seen with celery 5.7.0 / kombu 5.7.0 (the newest releases; no fixed version or setting
exists): when Redis goes away, the consumer's ``on_connection_error_after_connected``
first calls ``connection.collect()``, which closes the channels and then clears the
transport's ``client``; when closing the default channel failed there (its pending BRPOP
read raises ``ConnectionError`` before the channel is marked closed), the following
``connection.close()`` closes it again, and ``Channel.close`` -> ``QoS.restore_unacked``
-> ``_create_client`` -> ``_connparams`` reads ``self.connection.client.hostname`` on
``None``. That ``AttributeError`` is not a connection error, so ``ignore_errors`` lets it
through and the worker stops with ``Unrecoverable error: AttributeError("'NoneType'
object has no attribute 'hostname'")`` and exit status 1 (reproduced here about once in
eight Redis restarts, with task events on).

The guard: ``restore_unacked`` without a client, on a channel whose transport has no
client any more, restores nothing instead of failing. Nothing is lost: kombu keeps every
delivered, unacknowledged message in the broker's ``unacked`` hash until it is
acknowledged, and puts it back in its queue once it is older than ``visibility_timeout``;
the worker dropped its copies anyway (``Consumer.on_close``). Reports do not wait for that:
their leases stop being renewed and the sweep sends them again (``workers/report.py``);
fetch, plan and sweep messages expire, and a round's merge is repeated by the next round.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)

_MARK = "_tms_guarded"


def apply() -> bool:
    """Install the guard on kombu's Redis ``QoS.restore_unacked`` (once); True if installed now."""
    qos = kombu_redis.QoS
    original = qos.restore_unacked
    if getattr(original, _MARK, False):
        return False

    def restore_unacked(self, client=None):
        if client is None:
            transport = getattr(self.channel, "connection", None)
            if transport is None or getattr(transport, "client", None) is None:
                held = len(self._delivered)
                self._delivered.clear()
                if held:
                    log.warning("broker connection closed: %d unacknowledged message(s) stay in the broker's unacked "
                                "set and return to their queue after visibility_timeout", held)
                return None
        return original(self, client)

    setattr(restore_unacked, _MARK, True)
    restore_unacked.unguarded = original  # type: ignore[attr-defined]
    restore_unacked.__doc__ = original.__doc__
    qos.restore_unacked = restore_unacked
    return True


# One client per channel ------------------------------------------------------------------

_REUSE_MARK = "_tms_reused"


def reuse_clients() -> bool:
    """Make kombu's Redis ``Channel.conn_or_acquire`` reuse one client per channel instead
    of building one for every call; True if installed now.

    kombu 5.7 builds a new ``redis.Redis`` (``Channel._create_client``) each time it
    needs one without a client at hand: twice a task message (``QoS.append`` when it
    is delivered, ``QoS.ack``). redis-py 8 fills about two hundred response callbacks in
    every client it builds: measured, 9 % of a report worker's CPU. The client is only a
    handle on the channel's connection pool (built once per channel, ``Channel.pool``)
    and is safe to share between threads, so one per channel serves every call; a new
    channel (after a reconnect) builds its own."""
    channel = kombu_redis.Channel
    original = channel.conn_or_acquire
    if getattr(original, _REUSE_MARK, False):
        return False

    @contextmanager
    def conn_or_acquire(self, client=None):
        if client:
            yield client
            return
        cached = self.__dict__.get("_tms_client")
        if cached is None:
            cached = self._create_client()
            self._tms_client = cached
        yield cached

    setattr(conn_or_acquire, _REUSE_MARK, True)
    conn_or_acquire.unpatched = original  # type: ignore[attr-defined]
    channel.conn_or_acquire = conn_or_acquire
    return True
