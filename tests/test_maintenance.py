"""Sweep's clean-up of gone pods' cursors, against the fake Kubernetes API and real Redis."""

from __future__ import annotations

import json

from app.kube import LogSource
from app.ledger import Ledger
from app.maintenance import GONE_AFTER, sweep
from app.settings import Settings


def test_cursors_go_only_for_pods_gone_for_an_hour(r, kube, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", kube.write_kubeconfig(tmp_path / "kubeconfig"))
    live = kube.add_pod("traefik-live")
    gone = kube.add_pod("traefik-gone")
    recent = kube.add_pod("traefik-recent")
    replaced_old = kube.add_pod("traefik-replaced")
    ledger = Ledger(r, "gc", 60)
    ledger.initialise(0)
    pods = {uid: name for uid, name in [(live, "traefik-live"), (gone, "traefik-gone"), (recent, "traefik-recent"),
                                        (replaced_old, "traefik-replaced")]}
    ledger.note_pods([{"uid": uid, "name": name, "namespace": "traefik", "deleting": False} for uid, name in pods.items()])
    for uid in pods:
        assert ledger.commit(f"{uid}/traefik", "", "containerd://x|1|1", {}, {}).status == "ok"
    long_ago = ledger.now() - GONE_AFTER - 60
    for uid, name in pods.items():  # all unseen for over an hour, except "recent"
        if name != "traefik-recent":
            r.hset(ledger.k("pods"), uid, json.dumps({"uid": uid, "name": name, "last_seen": long_ago}))
    kube.delete("traefik-gone")
    kube.delete("traefik-recent")
    kube.replace_pod("traefik-replaced")  # same name, another uid
    source = LogSource("traefik", "app.kubernetes.io/name=traefik", 5)
    out = sweep(ledger, source, Settings(), lambda members: None)
    source.close()
    assert out["forgotten_pods"] == 2
    left = {field.split("/")[0] for field in ledger.cursors()}
    assert left == {live, recent}
    assert set(ledger.pods()) == {live, recent}
