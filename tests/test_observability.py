"""Operators see their fleet: /metrics, the dashboard (in headless Chromium) and
`connected-registry show --watch`, against a real root and a real edge.

One hierarchy for the module: root → edgeA (ReadWrite, shop/*, bandwidth cap 4 MiB/s so a
large blob takes seconds). The edge serves /metrics publicly (`metrics_public`); the root
needs the admin or a token with `metrics/read`.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import os

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from connreg.testing.hierarchy import Hierarchy, cli, wait_for
from connreg.testing.oci import (OCI_CONFIG, OCI_MANIFEST, Image, descriptor, make_image,
                                 sha256)
from helpers import push_blob, push_image

EDGE = "edgeA"
MONITOR = "prometheus"
PULLER = "puller"
CAP = 4 * 1024 * 1024
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def _password(doc) -> str:
    return next(p["value"] for p in doc["passwords"] if p["name"] == "password1")


class Fleet:
    def __init__(self, h: Hierarchy, monitor: tuple[str, str], puller: tuple[str, str]):
        self.h = h
        self.monitor = monitor
        self.puller = puller

    @property
    def root(self):
        return self.h.root

    @property
    def edge(self):
        return self.h.nodes[EDGE]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    h = Hierarchy(tmp_path_factory.mktemp("fleet"))
    try:
        root = h.start_root()
        # A scope map with the node-wide action, for a scraper's token.
        cli(root, "scope-map", "create", "--name", "monitoring", "--metrics-read")
        # The tokens over the management API (what the CLI sends; quicker than 4 processes).
        with httpx.Client(base_url=f"{root.url}/connreg/v1", auth=root.admin, timeout=30) as api:
            for body in ({"name": MONITOR, "scopeMap": "monitoring"},
                         {"name": PULLER, "actions": ["repositories/shop/*/content/read",
                                                      "repositories/shop/*/metadata/read"]}):
                assert api.post("/tokens", json=body).status_code == 201
            monitor_pw, puller_pw = (
                _password(api.post(f"/tokens/{name}/credentials",
                                   json={"passwordName": "password1"}).json())
                for name in (MONITOR, PULLER))
        h.create(EDGE, "ReadWrite", ["shop/*"],
                 extra=["--client-tokens", MONITOR, PULLER, "--bandwidth-limit", str(CAP)])
        h.start_child(EDGE, env={"CONNREG_METRICS_PUBLIC": "true"})
        yield Fleet(h, (MONITOR, monitor_pw), (PULLER, puller_pw))
    finally:
        h.stop_all()


def scrape(node, auth=None) -> dict[tuple, float]:
    r = httpx.get(f"{node.url}/metrics", auth=auth, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_metrics_need_admin_or_metrics_read(fleet):
    url = f"{fleet.root.url}/metrics"
    r = httpx.get(url, timeout=30)
    assert r.status_code == 401
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert "metrics/read" in r.json()["errors"][0]["message"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer realm=")
    r = httpx.get(url, auth=fleet.puller, timeout=30)  # valid token, no metrics/read
    assert r.status_code == 403
    assert "metrics/read" in r.json()["errors"][0]["message"]
    assert httpx.get(url, auth=("admin", "wrong-password"), timeout=30).status_code == 401
    assert httpx.get(url, auth=fleet.monitor, timeout=30).status_code == 200
    assert httpx.get(url, auth=fleet.root.admin, timeout=30).status_code == 200
    # The edge has metrics_public on: no credentials needed there.
    assert httpx.get(f"{fleet.edge.url}/metrics", timeout=30).status_code == 200


def test_metric_series_move_with_traffic_at_root_and_edge(fleet):
    root, edge = fleet.root, fleet.edge
    wait_for(lambda: value(scrape(root, fleet.monitor), "connreg_registry_state",
                           registry=EDGE, state="Online") == 1, 30, message="edge Online")
    # One created but never started: Offline, and not active (the example alert skips it).
    with httpx.Client(base_url=f"{root.url}/connreg/v1", auth=root.admin, timeout=30) as api:
        assert api.post("/connected-registries", json={
            "name": "never-started", "mode": "ReadOnly", "repositories": ["shop/*"]}
        ).status_code == 201
    samples = scrape(root, fleet.monitor)
    assert value(samples, "connreg_registry_state", registry="never-started",
                 state="Offline") == 1
    assert value(samples, "connreg_registry_active", registry="never-started") == 0
    assert value(samples, "connreg_registry_active", registry=EDGE) == 1
    before_root = scrape(root, fleet.monitor)
    before_edge = scrape(edge)
    failed_before = value(before_root, "connreg_auth_failed_logins_total")

    image = make_image([300_000, 2_000])
    with httpx.Client(base_url=root.url, auth=root.admin, timeout=30) as c:
        push_image(c, "shop/app", image, "v1")
    with httpx.Client(base_url=edge.url, auth=fleet.puller, timeout=30) as c:
        wait_for(lambda: c.head("/v2/shop/app/manifests/v1",
                                headers={"Accept": OCI_MANIFEST}).status_code == 200, 30,
                 message="the image at the edge")
    httpx.get(f"{root.url}/v2/", auth=("admin", "not-the-password"), timeout=30)

    after = scrape(root, fleet.monitor)
    puts = ("connreg_http_requests_total", (("method", "PUT"), ("route", "v2:manifest"),
                                            ("status", "201")))
    assert after[puts] >= (before_root.get(puts) or 0) + 1
    assert value(after, "connreg_http_request_duration_seconds_count", route="v2:manifest",
                 method="PUT") >= 1
    assert value(after, "connreg_http_request_bytes_total", route="v2:upload-start") >= 300_000
    assert value(after, "connreg_storage_bytes") > value(before_root, "connreg_storage_bytes")
    assert value(after, "connreg_storage_free_bytes") > 0
    assert value(after, "connreg_auth_failed_logins_total") == failed_before + 1
    assert value(after, "connreg_sync_child_bytes_total", registry=EDGE) >= 300_000
    # The edge caught up: no lag in entries or time once its report says so.
    wait_for(lambda: value(scrape(root, fleet.monitor), "connreg_sync_lag_entries",
                           registry=EDGE) == 0, 30, message="lag back to 0")
    final = scrape(root, fleet.monitor)
    assert value(final, "connreg_sync_lag_seconds", registry=EDGE) == 0
    assert value(final, "connreg_sync_last_contact_timestamp_seconds", registry=EDGE) > 0
    assert value(final, "connreg_registry_outbox_entries", registry=EDGE, state="parked") == 0

    edge_now = scrape(edge)
    assert value(edge_now, "connreg_sync_bytes_total", direction="down") >= \
        value(before_edge, "connreg_sync_bytes_total", direction="down") + 300_000
    assert value(edge_now, "connreg_storage_bytes") >= 300_000
    assert value(edge_now, "connreg_sync_connection_state", state="Online") == 1
    assert value(edge_now, "connreg_sync_bandwidth_limit_bytes_per_second") == CAP
    assert value(edge_now, "connreg_http_requests_total", route="v2:manifest", method="HEAD",
                 status="200") >= 1

    # A push at the edge goes up: the up direction and the outbox move.
    small = make_image([50_000])
    with httpx.Client(base_url=edge.url, auth=edge.admin, timeout=30) as c:
        push_image(c, "shop/edge-made", small, "v1")
    wait_for(lambda: value(scrape(edge), "connreg_sync_bytes_total", direction="up")
             >= 50_000, 30, message="the edge's push counted upward")
    wait_for(lambda: value(scrape(edge), "connreg_sync_outbox_entries", state="pending") == 0,
             30, message="the outbox drained")

    # A garbage collection at the root: counted, with what it freed (an orphaned blob).
    orphan = os.urandom(40_000)
    with httpx.Client(base_url=root.url, auth=root.admin, timeout=30) as c:
        push_blob(c, "shop/orphan", orphan)
        r = c.post("/connreg/v1/gc", json={"gracePeriodSeconds": 0})
        assert r.status_code == 200, r.text
    collected = scrape(root, fleet.monitor)
    assert value(collected, "connreg_gc_runs_total") == value(final, "connreg_gc_runs_total") + 1
    assert value(collected, "connreg_gc_freed_bytes_total") >= 40_000
    assert value(collected, "connreg_gc_last_run_timestamp_seconds") > 0

    # Bounded labels: no digest, tag or repository name appears as a label value.
    for (name, labels) in final:
        for _, label_value in labels:
            assert "sha256" not in label_value and "shop/" not in label_value, (name, labels)


WATCH_LINE = re.compile(r"^edgeA: (\w+) \| ([\d.]+ \w+) down, ([\d.]+ \w+) up \| "
                        r"([\d.]+ \w+)/s \| (.*)$")


def _lines(proc) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


UNITS = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3}


def _bytes(text: str) -> float:
    number, unit = text.split()
    return float(number) * UNITS[unit]


def _eta_seconds(text: str) -> int:
    m = re.fullmatch(r"(?:(\d+) h )?(?:(\d+) min )?(\d+) s|(\d+) h (\d+) min", text)
    assert m, text
    if m[4]:
        return int(m[4]) * 3600 + int(m[5]) * 60
    return int(m[1] or 0) * 3600 + int(m[2] or 0) * 60 + int(m[3])


def raw_image(size: int) -> Image:
    """An image with one uncompressed random layer (no gzip: quick to make at any size)."""
    layer = os.urandom(size)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": descriptor(OCI_CONFIG, config),
                           "layers": [descriptor(OCI_LAYER, layer)]}).encode()
    return Image(config, [layer], manifest)


def test_show_watch_prints_bytes_rate_and_eta_during_a_large_sync(fleet):
    root = fleet.root
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNREG_")}
    env.update(CONNREG_REGISTRY=root.url, CONNREG_USERNAME="admin",
               CONNREG_PASSWORD=root.admin_password)
    proc = subprocess.Popen([sys.executable, "-m", "connreg", "connected-registry", "show",
                             "--name", EDGE, "--watch", "--interval", "0.3"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = _lines(proc)
        first = lines.get(timeout=30)
        assert WATCH_LINE.match(first), first
        big = raw_image(20 * 1024 * 1024)  # ~5 s through the 4 MiB/s cap
        with httpx.Client(base_url=root.url, auth=root.admin, timeout=60) as c:
            push_image(c, "shop/big", big, "v1")
        # Lines while the blob moves (bytes left, ETA), until the line is idle again with
        # the blob's bytes counted.
        progress = []
        while True:
            line = lines.get(timeout=60)
            assert line is not None, proc.stderr.read()
            m = WATCH_LINE.match(line)
            assert m, line
            if "left" in m[5]:
                eta = re.fullmatch(r"(.+) left in shop/big \| ETA (.+)", m[5])
                assert eta, line
                progress.append((_bytes(m[2]), _bytes(m[4]), _bytes(eta[1]),
                                 _eta_seconds(eta[2]) if eta[2] != "unknown" else None))
            elif progress and m[5].startswith("idle"):
                break
        assert len(progress) >= 2, progress  # reported at least twice while it ran
        downs = [p[0] for p in progress]
        assert downs == sorted(downs) and downs[-1] > downs[0], progress  # bytes move
        lefts = [p[2] for p in progress]
        assert lefts[-1] < lefts[0], progress                            # and bytes left fall
        assert any(rate > 0 for _, rate, _, _ in progress), progress
        etas = [p[3] for p in progress if p[3] is not None]
        assert etas and min(etas) < 120, progress
        before = _bytes(WATCH_LINE.match(first)[2])
        assert _bytes(m[2]) >= before + 20 * 1024 * 1024, line  # the whole blob came down
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- the dashboard --------------------------------------------------------------------------
ONLINE_GREEN = (0x1a, 0x7f, 0x37)  # the Online badge and card border (ui/static/style.css)


def _login(client: httpx.Client, username: str, password: str) -> httpx.Response:
    page = client.get("/ui/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)[1]
    return client.post("/ui/login", data={"csrf": csrf, "username": username,
                                          "password": password})


def _session_csrf(client: httpx.Client) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', client.get("/ui/").text)[1]


def test_dashboard_sessions_csrf_and_escaping(fleet):
    root = fleet.root
    with httpx.Client(base_url=root.url, timeout=30) as c:
        assert c.get("/ui/live").status_code == 401
        r = c.get("/ui/")
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"
        # No form token (a cross-site post): refused, no session.
        r = c.post("/ui/login", data={"username": "admin", "password": root.admin_password})
        assert r.status_code == 403 and "connreg_ui=" not in r.headers.get("set-cookie", "")
        # A valid token without metrics/read is not let in, and says why.
        r = _login(c, *fleet.puller)
        assert r.status_code == 403 and "metrics/read" in r.text
        # What the caller typed is echoed escaped.
        r = _login(c, '"><script>alert(1)</script>', "wrong")
        assert r.status_code == 401
        assert "<script>alert(1)</script>" not in r.text and "&lt;script&gt;" in r.text
        r = c.post("/ui/login", content=b"username=" + b"a" * 20_000,
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 413
    with httpx.Client(base_url=root.url, timeout=30) as c:
        r = _login(c, *fleet.monitor)  # a token with metrics/read may use it
        assert r.status_code == 303 and r.headers["location"] == "/ui/"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui" in cookie
        page = c.get("/ui/")
        assert page.status_code == 200 and EDGE in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert c.post("/ui/logout", data={}).status_code == 403  # no form token
        assert c.get("/ui/").status_code == 200  # still logged in
        assert c.post("/ui/logout", data={"csrf": _session_csrf(c)}).status_code == 303
        assert c.get("/ui/").status_code == 303  # the session is gone
    # The repository browser: tags, digests, sizes, referrers and lock state; the audit list.
    image = make_image([20_000])
    signature = make_image([100], subject={"mediaType": OCI_MANIFEST, "digest": image.digest,
                                           "size": len(image.manifest)},
                           artifact_type="application/vnd.dev.cosign.signature")
    with httpx.Client(base_url=root.url, auth=root.admin, timeout=30) as c:
        push_image(c, "shop/browse", image, "v1")
        push_image(c, "shop/browse", signature, signature.digest)
    cli(root, "repository", "update", "--repository", "shop/browse", "--tag", "v1",
        "--write-enabled", "false")
    with httpx.Client(base_url=root.url, timeout=30) as c:
        assert _login(c, *root.admin).status_code == 303
        assert "shop/browse" in c.get("/ui/repositories").text
        page = c.get("/ui/repositories/shop/browse").text
        assert image.digest in page and "application/vnd.dev.cosign.signature" in page
        assert 'class="lock locked">write locked' in page
        assert 'class="lock open">delete on' in page
        fleet_page = c.get("/ui/").text
        assert "shop/browse" in fleet_page.split("Recent audit events")[1]
        # The audit list shows the failed login's name above as text, never as markup.
        assert "<script>alert(1)" not in fleet_page
        assert c.get("/ui/repositories/shop/nothing-here").status_code == 404
    # The edge's local view: itself, with its own admin.
    with httpx.Client(base_url=fleet.edge.url, timeout=30) as c:
        assert _login(c, *fleet.edge.admin).status_code == 303
        page = c.get("/ui/").text
        assert 'data-node="edgeA"' in page and "this node" in page


def test_session_expires():
    from connreg.ui.sessions import Sessions
    now = [1000.0]
    sessions = Sessions(3600, clock=lambda: now[0])
    cookie, session = sessions.create("admin")
    assert sessions.get(cookie) is session
    now[0] += 3599
    assert sessions.get(cookie) is session
    now[0] += 2
    assert sessions.get(cookie) is None and len(sessions) == 0
    assert sessions.get("x" * 1000) is None


def test_dashboard_in_headless_chromium(fleet, tmp_path):
    from connreg.testing.browser import Browser, count_color, decode_png, find_chromium
    if find_chromium() is None:
        pytest.skip("chromium is not installed (make deps installs it)")
    root = fleet.root
    wait_for(lambda: value(scrape(root, fleet.monitor), "connreg_registry_state",
                           registry=EDGE, state="Online") == 1, 30, message="edge Online")
    image = make_image([10_000])
    with httpx.Client(base_url=root.url, auth=root.admin, timeout=30) as c:
        push_image(c, "shop/ui-demo", image, "v1")
    browser = Browser(tmp_path / "profile")
    try:
        browser.navigate(f"{root.url}/ui/")
        browser.wait_for("location.pathname === '/ui/login' && document.readyState === "
                         "'complete' && !!document.getElementById('login-button')")
        # Log in through the form, as a person would.
        browser.evaluate(f"document.getElementById('username').value = 'admin';"
                         f"document.getElementById('password').value = "
                         f"{json_string(root.admin_password)};"
                         "document.getElementById('login-button').click(); true")
        browser.wait_for("location.pathname === '/ui/' && document.readyState === 'complete'"
                         " && !!document.getElementById('tree')")
        tree_text = browser.evaluate("document.getElementById('tree').innerText")
        assert "root" in tree_text and EDGE in tree_text and "Online" in tree_text, tree_text
        # The edge is up (Syncing while the image just pushed comes down).
        assert browser.evaluate(
            f"document.querySelector('li[data-node=\"{EDGE}\"]').dataset.state") in (
            "Online", "Syncing")
        session = next(c for c in browser.cookies(f"{root.url}/ui/") if c["name"] == "connreg_ui")
        assert session["httpOnly"] and session["sameSite"] == "Strict" and session["path"] == "/ui"

        shot = browser.screenshot()
        (tmp_path / "dashboard.png").write_bytes(shot)
        width, height, _ = decode_png_header(shot)
        assert (width, height) == (1280, 900)
        # The tree is drawn: its box holds the Online green of the two nodes' badges.
        box = browser.evaluate("(() => { const r = document.getElementById('tree')"
                               ".getBoundingClientRect(); return [r.x, r.y, r.width, "
                               "r.height]; })()")
        x, y, w, h = (int(v) for v in box)
        assert w > 200 and h > 100, box
        clip = browser.call("Page.captureScreenshot", {
            "format": "png", "clip": {"x": x, "y": y, "width": min(w, 700),
                                      "height": min(h, 500), "scale": 1}})["data"]
        import base64
        pixels = decode_png(base64.b64decode(clip))
        assert count_color(pixels, ONLINE_GREEN) > 200

        # The live part refreshes by itself.
        stamp = browser.evaluate("document.querySelector('.updated').innerText")
        browser.wait_for(f"document.querySelector('.updated').innerText !== "
                         f"{json_string(stamp)}", 20)

        # The repository browser: the repository, its tag and digest.
        browser.navigate(f"{root.url}/ui/repositories")
        browser.wait_for("!!document.getElementById('repositories') && "
                         "document.getElementById('repositories').innerText"
                         ".includes('shop/ui-demo')")
        browser.evaluate("[...document.querySelectorAll('#repositories a')]"
                         ".find(a => a.innerText === 'shop/ui-demo').click(); true")
        tags = browser.wait_for("document.getElementById('tags') && "
                                "document.getElementById('tags').innerText")
        assert "v1" in tags and image.digest in tags

        # Logging out through the form ends the session.
        browser.evaluate("document.querySelector('form.logout button').click(); true")
        browser.wait_for("location.pathname === '/ui/login'")
        browser.navigate(f"{root.url}/ui/")
        browser.wait_for("location.pathname === '/ui/login' && document.readyState === "
                         "'complete'")
    finally:
        browser.close()


def json_string(text: str) -> str:
    import json
    return json.dumps(text)


def decode_png_header(data: bytes) -> tuple[int, int, int]:
    import struct
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height, data[25]
