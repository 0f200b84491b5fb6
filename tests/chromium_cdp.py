"""A tiny headless-Chromium driver over the DevTools protocol (websocket-client), for tests.

It opens a local file (or, with ``loopback=True``, a server on 127.0.0.1) with the network cut off
(unresolvable hosts, a dead proxy), records console errors, exceptions and every request URL,
evaluates JavaScript and takes screenshots."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    env = os.environ.get("BROWSER_PATH")
    if env and Path(env).exists():
        return env
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Chromium:
    def __init__(self, binary: str, width: int = 1400, height: int = 1000, timeout: float = 30.0,
                 loopback: bool = False):
        import websocket  # websocket-client

        self.user_data = tempfile.mkdtemp(prefix="tl-chromium-")
        self.port = _free_port()
        self.timeout = timeout
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
                f"--user-data-dir={self.user_data}", f"--remote-debugging-port={self.port}",
                "--remote-allow-origins=*", f"--window-size={width},{height}",
                # network off: no name resolves and every proxied request goes to a closed local port
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--proxy-server=http://127.0.0.1:9",
                # loopback=True: 127.0.0.1 is reached directly (a test's own server); else it is proxied too
                f"--proxy-bypass-list={'127.0.0.1' if loopback else '<-loopback>'}",
                "about:blank"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.events: list[dict] = []
        self._id = 0
        try:
            ws_url = self._page_ws_url()
            self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.send(f"{domain}.enable")
            self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.close()
            raise

    def _page_ws_url(self) -> str:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with code {self.proc.returncode}")
            try:
                with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                        f"http://127.0.0.1:{self.port}/json/list", timeout=2) as resp:
                    targets = json.load(resp)
                pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError("chromium's DevTools endpoint did not come up")

    def send(self, method: str, **params):
        self._id += 1
        my_id = self._id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)
        raise TimeoutError(method)

    def wait_event(self, method: str, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        for event in self.events:
            if event.get("method") == method:
                return event
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            self.events.append(msg)
            if msg.get("method") == method:
                return msg
        raise TimeoutError(method)

    def open(self, path: str | os.PathLike) -> None:
        """Load a local file, or an ``http://127.0.0.1...`` URL, and wait for its load event."""
        self.events.clear()
        url = str(path) if str(path).startswith("http://127.0.0.1") else Path(path).resolve().as_uri()
        self.send("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20.0):
        """The first truthy value of the page expression, polled until ``timeout``."""
        return wait_until(lambda: self.evaluate(expression), timeout)

    def next_frames(self, n: int = 2) -> None:
        """Return once the page has drawn ``n`` more animation frames (what was changed is on screen)."""
        self.evaluate("new Promise(done => { let left = %d; const tick = () => --left ? "
                      "requestAnimationFrame(tick) : done(true); requestAnimationFrame(tick); })" % n)

    def screenshot(self, path: str | os.PathLike | None = None, full_page: bool = False) -> bytes:
        params = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        data = base64.b64decode(self.send("Page.captureScreenshot", **params)["data"])
        if path is not None:
            Path(path).write_bytes(data)
        return data

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries seen since the last ``open``."""
        out = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                out.append("exception: " + str(details.get("exception", {}).get("description") or details.get("text")))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                out.append("log: " + params["entry"].get("text", ""))
        return out

    def request_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            shutil.rmtree(self.user_data, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_until(condition, timeout: float = 20.0, interval: float = 0.25):
    """Poll ``condition()`` until it is truthy (returned) or ``timeout`` seconds pass (its last value)."""
    deadline = time.monotonic() + timeout
    value = condition()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = condition()
    return value


# --- static check of saved pages --------------------------------------------------------------
import re  # noqa: E402

_FETCHING = [
    r"<script\b[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//",
    r"<link\b[^>]*\bhref\s*=\s*[\"']?(?:https?:)?//",
    r"<(?:img|iframe|source|video|audio|embed)\b[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//",
    r"@import\s+(?:url\()?[\"']?(?:https?:)?//",
    r"url\(\s*[\"']?(?:https?:)?//",
    r"\bfetch\(\s*[\"'`](?:https?:)?//",
    r"\bimport\(\s*[\"'`](?:https?:)?//",
    r"\bfrom\s+[\"'](?:https?:)?//",
    r"\.src\s*=\s*[\"'`](?:https?:)?//",
]


def fetchable_urls(page: str) -> list[str]:
    """Network URLs a browser would fetch on loading ``page`` (script/link/img sources, CSS
    imports and url(), fetch/import of absolute URLs): excerpts of every match."""
    hits = []
    for pattern in _FETCHING:
        for m in re.finditer(pattern, page, flags=re.IGNORECASE):
            hits.append(page[m.start():m.end() + 60])
    return hits
