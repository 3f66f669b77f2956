"""A minimal headless-Chromium driver over the DevTools protocol (websocket-client, no downloads).

    with Chromium() as b:
        b.open("file:///.../index.html")
        b.wait("document.body.dataset.view === 'index'")
        b.eval("document.title")
        b.screenshot(path)

Uses the system's Chromium (Debian: ``apt-get install chromium``), started headless with a fresh
profile and no network services. Every request the page makes and every JS exception / console error
is recorded (``requests``, ``errors``) so tests can check the site stays offline and error-free.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import websocket

CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
         "--disable-features=Translate,MediaRouter,OptimizationHints", "--remote-debugging-port=0")


def find_chromium() -> str | None:
    env = os.environ.get("CHROMIUM")
    if env:
        return env
    for c in CANDIDATES:
        p = c if os.path.isabs(c) and os.access(c, os.X_OK) else shutil.which(c)
        if p:
            return p
    return None


class CDPError(RuntimeError):
    pass


class Chromium:
    def __init__(self, width: int = 1360, height: int = 1000, timeout: float = 30.0):
        self.binary = find_chromium()
        if self.binary is None:
            raise FileNotFoundError("Chromium not found: install it with `apt-get install -y chromium chromium-driver`")
        self.width, self.height, self.timeout = width, height, timeout
        self.profile = tempfile.mkdtemp(prefix="treesae-chromium-")
        self.proc = subprocess.Popen([self.binary, *FLAGS, f"--user-data-dir={self.profile}",
                                      f"--window-size={width},{height}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._id = 0
        self.events: list[dict] = []
        self.requests: list[str] = []
        self.errors: list[str] = []
        try:
            self._connect()
        except Exception:
            self.close()
            raise

    # ------------------------------------------------------------------ connection
    def _connect(self):
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not port_file.exists() or len(port_file.read_text().split()) < 1:
            if self.proc.poll() is not None:
                raise CDPError(f"Chromium exited with code {self.proc.returncode} before opening DevTools")
            if time.monotonic() > deadline:
                raise CDPError("Chromium did not open its DevTools port in time")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        targets = []
        while not targets:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                targets = [t for t in json.load(r) if t.get("type") == "page"]
            if not targets:
                if time.monotonic() > deadline:
                    raise CDPError("no page target in Chromium")
                time.sleep(0.05)
        self.ws = websocket.create_connection(targets[0]["webSocketDebuggerUrl"], timeout=self.timeout,
                                              suppress_origin=True, enable_multithread=False)
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=False)

    def _record(self, msg: dict):
        m, p = msg.get("method"), msg.get("params", {})
        if m == "Network.requestWillBeSent":
            self.requests.append(p["request"]["url"])
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.errors.append(d.get("exception", {}).get("description") or d.get("text", "exception"))
        elif m == "Runtime.consoleAPICalled" and p.get("type") == "error":
            self.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            self.errors.append(p["entry"].get("text", "") + " " + p["entry"].get("url", ""))
        elif m == "Network.loadingFailed":
            self.errors.append(f"loading failed: {p.get('errorText')}")
        self.events.append(msg)

    def send(self, method: str, **params):
        self._id += 1
        mid = self._id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while True:
            if time.monotonic() > deadline:
                raise CDPError(f"no answer to {method}")
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise CDPError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._record(msg)

    # ------------------------------------------------------------------ page helpers
    def eval(self, expression: str, await_promise: bool = False):
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=await_promise)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise CDPError(f"JS error in {expression[:80]!r}: {d.get('exception', {}).get('description') or d.get('text')}")
        return r.get("result", {}).get("value")

    def open(self, url: str):
        self.send("Page.navigate", url=url)
        self.wait("document.readyState === 'complete'")

    def wait(self, condition: str, timeout: float = 15.0, interval: float = 0.02):
        """Poll a JS expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            v = self.eval(f"(function(){{try{{return ({condition});}}catch(e){{return null;}}}})()")
            if v:
                return v
            if time.monotonic() > deadline:
                raise CDPError(f"timed out waiting for {condition!r}; page shows: "
                               f"{(self.eval('document.body && document.body.innerText') or '')[:400]!r}; errors: {self.errors}")
            time.sleep(interval)

    def click(self, selector: str):
        ok = self.eval(f"(function(){{var e=document.querySelector({json.dumps(selector)});"
                       f"if(!e)return false;e.scrollIntoView({{block:'center'}});e.click();return true;}})()")
        if not ok:
            raise CDPError(f"nothing matches {selector!r}")

    def screenshot(self, path, full_page: bool = True) -> Path:
        params = {"format": "png", "captureBeyondViewport": full_page}
        if full_page:
            w, h = self.eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
            params["clip"] = {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}
        data = self.send("Page.captureScreenshot", **params)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def drain(self, seconds: float = 0.1):
        """Read pending events (requests, errors) for a moment."""
        self.ws.settimeout(seconds)
        try:
            while True:
                self._record(json.loads(self.ws.recv()))
        except (websocket.WebSocketTimeoutException, TimeoutError):
            pass
        finally:
            self.ws.settimeout(self.timeout)

    # ------------------------------------------------------------------ shutdown
    def close(self):
        try:
            if getattr(self, "ws", None) is not None:
                try:
                    self.ws.send(json.dumps({"id": 10**6, "method": "Browser.close"}))
                except Exception:
                    pass
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
