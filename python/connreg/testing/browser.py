"""Drive a real headless Chromium (Debian's `chromium`) over the DevTools protocol, for the
dashboard tests: navigate, run a line of JavaScript, read cookies, take a screenshot.

No Selenium or Playwright: Chromium is started with `--remote-debugging-port=0`, the port it
picked is read from `DevToolsActivePort` in its profile directory, and commands go over the
page's websocket (the `websockets` package, synchronous client). Offline, no downloads.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path

import httpx
from websockets.sync.client import connect

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


class Browser:
    def __init__(self, profile: Path, width: int = 1280, height: int = 900):
        executable = find_chromium()
        if executable is None:
            raise RuntimeError("no chromium found (Debian: apt-get install chromium)")
        profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--hide-scrollbars",
             "--remote-debugging-port=0", "--remote-allow-origins=*",
             f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._ids = itertools.count(1)
        try:
            port = self._port(profile / "DevToolsActivePort")
            pages = []
            deadline = time.monotonic() + 30
            while not pages and time.monotonic() < deadline:
                targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
                pages = [t for t in targets if t.get("type") == "page"]
                if not pages:
                    time.sleep(0.1)
            if not pages:
                raise RuntimeError("chromium opened no page")
            self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None,
                              open_timeout=30)
            self.ws.__enter__()  # the context-manager form; closed in close()
            self.call("Page.enable")
            self.call("Network.enable")
            # The viewport itself, not the window (whose frame takes part of the height).
            self.call("Emulation.setDeviceMetricsOverride", {
                "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.close()
            raise

    def _port(self, path: Path, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            try:
                first = path.read_text().splitlines()[0]
                return int(first)
            except (FileNotFoundError, IndexError, ValueError):
                time.sleep(0.05)
        raise RuntimeError("chromium did not open its DevTools port")

    def call(self, method: str, params: dict | None = None, timeout: float = 30.0) -> dict:
        """Send one command and return its result (events arriving meanwhile are skipped)."""
        ident = next(self._ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.01)))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})

    def wait_for(self, expression: str, timeout: float = 30.0):
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.evaluate(expression)
                if last:
                    return last
            except RuntimeError:  # a navigation replaced the context mid-call
                pass
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {expression!r} "
                             f"(last value {last!r})")

    def cookies(self, url: str) -> list[dict]:
        return self.call("Network.getCookies", {"urls": [url]})["cookies"]

    def screenshot(self) -> bytes:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        return base64.b64decode(data)

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit RGB or RGBA, non-interlaced PNG:
    enough to look at the pixels of a browser screenshot without an imaging library."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    channels = 4 if color == 6 else 3
    raw = zlib.decompress(idat)
    stride = width * channels
    rows, previous = [], bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            upper_left = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - upper_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - upper_left)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else upper_left
                line[i] = (line[i] + predictor) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, rows


def count_color(png: tuple[int, int, list[bytes]], rgb: tuple[int, int, int],
                box: tuple[int, int, int, int] | None = None, tolerance: int = 8) -> int:
    """Pixels within `tolerance` of `rgb`, inside box (x0, y0, x1, y1) if given."""
    width, height, rows = png
    channels = len(rows[0]) // width
    x0, y0, x1, y1 = box or (0, 0, width, height)
    count = 0
    for y in range(max(y0, 0), min(y1, height)):
        row = rows[y]
        for x in range(max(x0, 0), min(x1, width)):
            i = x * channels
            if (abs(row[i] - rgb[0]) <= tolerance and abs(row[i + 1] - rgb[1]) <= tolerance
                    and abs(row[i + 2] - rgb[2]) <= tolerance):
                count += 1
    return count
