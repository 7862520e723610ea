"""Serving vs syncing (issue 13): the per-client request budget (api/client_budget.py) refuses
with OCI errors and Retry-After, delays before it refuses, never touches an ordinary client or
sync traffic, and a node's sync keeps moving while a poller hammers it."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest

from connreg.api.client_budget import Budget
from connreg.errors import RegistryError
from connreg.testing import start_node
from connreg.testing.hierarchy import Hierarchy, wait_for
from connreg.testing.oci import make_image
from helpers import error_codes, push_image


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def metric(node, name: str, anonymous: bool = False, **labels) -> float:
    r = httpx.get(f"{node.url}/metrics", auth=None if anonymous else node.admin, timeout=30)
    assert r.status_code == 200, r.text
    text = r.text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(name + ("{" + want + "}" if want else " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- the accounting, no nodes ----------------------------------------------------------------

def test_budget_admits_the_burst_then_delays_then_refuses_with_retry_after():
    clock = FakeClock()
    budget = Budget(rate=2, burst=3, max_wait=1.0, clock=clock)
    assert [budget.take("a") for _ in range(3)] == [0, 0, 0]  # the burst
    assert budget.take("a") == pytest.approx(0.5)  # then one every 1/rate s, waited for
    assert budget.take("a") == pytest.approx(1.0)
    with pytest.raises(RegistryError) as refused:
        budget.take("a")  # would wait 1.5 s > max wait
    exc = refused.value
    assert exc.status == 429 and exc.code.code == "TOOMANYREQUESTS"
    assert int(exc.headers["Retry-After"]) >= 1
    assert "client_request_rate" in exc.message and "2 requests/s" in exc.message
    assert budget.take("b") == 0  # another client is untouched
    clock.now += 10  # the budget refills
    assert budget.take("a") == 0
    assert (budget.waited, budget.refused) == (2, 1)


def test_budget_tracks_a_bounded_number_of_clients():
    budget = Budget(rate=1, burst=1, max_wait=0, clock=FakeClock(), max_clients=50)
    for i in range(500):
        budget.take(("10.0.0.1", f"user{i}"))
    assert len(budget) == 50


# --- one node, the budget on at all times -----------------------------------------------------

def test_over_budget_requests_get_oci_429_with_retry_after_and_others_pass(tmp_path):
    node = start_node(tmp_path / "node", env={
        "CONNREG_CLIENT_BUDGET_ALWAYS": "1", "CONNREG_CLIENT_REQUEST_RATE": "0.01",
        "CONNREG_CLIENT_REQUEST_BURST": "3", "CONNREG_CLIENT_REQUEST_MAX_WAIT_SECONDS": "0",
        "CONNREG_METRICS_PUBLIC": "1"})
    try:
        with httpx.Client(base_url=node.url, auth=node.admin, timeout=30) as admin:
            r = admin.get("/oauth2/token", params={"service": "connreg",
                                                   "scope": "repository:app:pull"})
            token = r.json()["token"]  # the admin's too: the same client as its Basic calls
            began = time.monotonic()
            answers = [admin.head("/v2/app/manifests/latest") for _ in range(12)]
            answers.append(admin.get("/v2/app/manifests/latest"))
            took = time.monotonic() - began
            answers.append(httpx.head(f"{node.url}/v2/app/manifests/latest", timeout=30,
                                      headers={"Authorization": f"Bearer {token}"}))
            refused = [r for r in answers if r.status_code == 429]
            # At most the burst (the token request took one) plus what 0.01/s refilled got
            # through; a token of the same user does not start a fresh budget.
            assert len(answers) - len(refused) <= 3 - 1 + int(took * 0.01) + 1
            assert answers[-1].status_code == 429
            assert refused
            for r in refused:
                assert int(r.headers["Retry-After"]) >= 1
                assert r.headers["Connreg-Error"].startswith("TOOMANYREQUESTS: client request "
                                                             "budget exceeded")
            assert error_codes(answers[-2]) == ["TOOMANYREQUESTS"]  # the GET, with a body
            assert "client_request_rate" in answers[-2].json()["errors"][0]["message"]
            # Another client (here: anonymous) has its own budget; health checks have none.
            assert httpx.get(f"{node.url}/v2/", timeout=30).status_code == 401
            assert httpx.get(f"{node.url}/healthz", timeout=30).status_code == 200
            # Made-up Basic names do not each get a budget: they share one per source (the
            # admin's first request, before its password was checked, took one of it too).
            made_up = [httpx.get(f"{node.url}/v2/", auth=(f"made-up-{i}", "guess"),
                                 timeout=30).status_code for i in range(5)]
            assert made_up.count(401) <= 3 and made_up[-1] == 429, made_up
        # Scraped anonymously: the admin's own budget is spent (the third anonymous request).
        assert metric(node, "connreg_client_budget_requests_total", anonymous=True,
                      outcome="refused") >= len(refused)
    finally:
        node.stop()


def test_an_over_budget_request_waits_its_turn_instead_of_being_refused(tmp_path):
    node = start_node(tmp_path / "node", args=["--no-auth"], env={
        "CONNREG_CLIENT_BUDGET_ALWAYS": "1", "CONNREG_CLIENT_REQUEST_RATE": "4",
        "CONNREG_CLIENT_REQUEST_BURST": "1", "CONNREG_CLIENT_REQUEST_MAX_WAIT_SECONDS": "5"})
    try:
        with httpx.Client(base_url=node.url, timeout=30) as c:
            began = time.monotonic()
            statuses = [c.get("/v2/").status_code for _ in range(5)]
            took = time.monotonic() - began
        assert statuses == [200] * 5
        assert took >= 4 * 0.25 * 0.9  # a lower bound: one request every 1/rate s
        assert metric(node, "connreg_client_budget_requests_total", anonymous=True,
                      outcome="waited") >= 4
        assert metric(node, "connreg_client_budget_requests_total", anonymous=True,
                      outcome="refused") == 0
    finally:
        node.stop()


def test_an_ordinary_client_is_not_refused_by_the_default_budget(tmp_path):
    """A pull's burst of requests (skopeo: every blob, manifest and the token dance) stays
    within the default budget, even when it applies at all times."""
    import shutil
    import subprocess

    if shutil.which("skopeo") is None:
        pytest.skip("skopeo not installed")
    node = start_node(tmp_path / "node", args=["--no-auth"],
                      env={"CONNREG_CLIENT_BUDGET_ALWAYS": "1"})
    try:
        with httpx.Client(base_url=node.url, timeout=30) as c:
            push_image(c, "app/base", make_image([4096] * 8), "v1")
        for i in range(3):
            subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                            f"docker://{node.host}/app/base:v1",
                            f"docker://{node.host}/app/copy{i}:v1"],
                           check=True, capture_output=True, timeout=120)
        subprocess.run(["skopeo", "copy", "--src-tls-verify=false",
                        f"docker://{node.host}/app/copy2:v1", f"dir:{tmp_path / 'out'}"],
                       check=True, capture_output=True, timeout=120)
        assert metric(node, "connreg_client_budget_requests_total", anonymous=True,
                      outcome="refused") == 0
    finally:
        node.stop()


# --- a connected registry, the default budget (while it syncs) --------------------------------

def test_sync_keeps_progressing_while_a_poller_hammers_the_node(tmp_path):
    # A small budget on every node, so the poller surely exceeds it however slow the machine;
    # the child's own sync requests to the root must never count against it.
    h = Hierarchy(tmp_path, env={"CONNREG_CLIENT_REQUEST_RATE": "5",
                                 "CONNREG_CLIENT_REQUEST_BURST": "10"})
    stop = threading.Event()
    served = {"ok": 0, "429": 0}
    try:
        root = h.start_root()
        h.create("polled", "ReadOnly", ["poll/*"])
        child = h.start_child("polled")
        with httpx.Client(base_url=root.url, auth=root.admin, timeout=60) as c:
            push_image(c, "poll/warm", make_image([512]), "v1")
        wait_for(lambda: httpx.get(f"{child.url}/v2/poll/warm/manifests/v1", auth=child.admin,
                                   timeout=30).status_code == 200, 60, message="warm-up image")

        def poll() -> None:
            with httpx.Client(base_url=child.url, auth=child.admin, timeout=60) as c:
                while not stop.is_set():
                    r = c.head("/v2/poll/warm/manifests/v1")
                    key = {200: "ok", 429: "429"}.get(r.status_code, str(r.status_code))
                    served[key] = served.get(key, 0) + 1

        pollers = [threading.Thread(target=poll, daemon=True) for _ in range(4)]
        for t in pollers:
            t.start()
        wait_for(lambda: served["ok"] > 20, 60, message="the poller being served")
        with httpx.Client(base_url=root.url, auth=root.admin, timeout=60) as c:
            for i in range(20):
                push_image(c, f"poll/app{i % 4}", make_image([2048, 2048]), f"t{i}")

        def arrived() -> int:
            """Tags of poll/app* in the child's change log (the sync API: never budgeted, so
            this check does not queue behind the poller, who is the same client)."""
            r = httpx.get(f"{child.url}/connreg/v1/sync/changes", auth=child.admin, timeout=30,
                          params={"cursor": 0, "limit": 1000})
            r.raise_for_status()
            return len({(c["repo"], c["tag"]) for c in r.json()["changes"]
                        if c["op"] == "manifest" and c["tag"]
                        and c["repo"].startswith("poll/app")})

        wait_for(lambda: arrived() == 20, 90, interval=1.0, message="all 20 images at the child")
        # The budget engaged (the poller was slowed while sync ran), and the poller was still
        # served: delayed, not shut out.
        assert metric(child, "connreg_client_budget_requests_total", outcome="waited") > 0
        assert served["ok"] > 20
        assert set(served) <= {"ok", "429"}
        # The root served the child's sync (its sync token, Basic) without budgeting it.
        assert metric(root, "connreg_client_budget_requests_total", outcome="waited") == 0
        assert metric(root, "connreg_client_budget_requests_total", outcome="refused") == 0
    finally:
        stop.set()
        h.stop_all()
