import time
import pytest
import app.fetching as F
from app.follow import Follower
from sim.fake_kube import FakeKube
from tests.followkit import POD, committed, make_fetcher
from tests.traffic import Traffic
from app.kube import LogSource
from app.ledger import Ledger
from sim.procs import wait_until

@pytest.fixture
def fake(tmp_path, monkeypatch):
    fk = FakeKube(rotate_bytes=None)
    fk.start()
    monkeypatch.setenv("KUBECONFIG", fk.write_kubeconfig(tmp_path / "kubeconfig"))
    fk.add_pod(POD)
    yield fk
    fk.stop()

@pytest.mark.parametrize("per_stamp", [100, 1])
def test_probe(fake, r, monkeypatch, per_stamp):
    led = Ledger(r, "fol", 3600)
    traffic = Traffic(seed=1, tunnels=100)
    n = 200_000
    now = time.time_ns()
    first = now - int(n / 2000 * 1e9) - 10**9
    led.initialise(first - 10**9)
    ts = first
    for s in range(0, n, per_stamp):
        if per_stamp == 1:
            lines = traffic.lines(1000)
            with fake._lock:
                pod = fake._require("traefik", POD); c = fake._container(pod, None)
                for i, l in enumerate(lines):
                    fake._append(c, [l], ts + i * 500_000, clamp=False, stream="stdout", now=fake.clock())
            ts += 1000 * 500_000
            if s + 1000 >= n: break
            continue
        fake.write_many(POD, traffic.lines(per_stamp), ts_ns=ts)
        ts += int(1e9 * per_stamp / 2000)
    src = LogSource("traefik", "app.kubernetes.io/name=traefik", 5)
    fetcher = make_fetcher(src, led)
    stats = {"fp": 0, "calls": 0, "consumed": 0}
    real_fp = F.fingerprint
    def fp(t, x):
        stats["fp"] += 1
        return real_fp(t, x)
    monkeypatch.setattr(F, "fingerprint", fp)
    real_consume = F.consume
    import app.follow as FO
    def consume(*a, **k):
        res = real_consume(*a, **k)
        stats["calls"] += 1; stats["consumed"] += res.consumed
        return res
    monkeypatch.setattr(FO, "consume", consume)
    uid = fake.pod_uid(POD)
    t0 = time.monotonic(); c0 = time.process_time()
    fetcher.fetch(POD, uid)
    fol = Follower(fetcher, max_pods=4, min_rate=1.0, slice_seconds=1.0)
    assert fol.offer(POD, uid)
    wait_until(lambda: committed(led) == traffic.expected(), 120, interval=0.2, what="all")
    print("\nSTATS", per_stamp, stats, "seconds %.2f cpu %.2f" % (time.monotonic() - t0, time.process_time() - c0))
    fol.stop(10)
