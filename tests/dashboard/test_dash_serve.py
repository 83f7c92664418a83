"""`iotmeter serve`: the dashboard in headless Chromium (Debian's chromium, driven through
chromedriver by selenium; no browser is downloaded). The server runs as the operator would
start it, with a token: a request without it is refused, a websocket from another origin too;
with it the page opens, the dashboard process behind it paints, and the fleet is live: the
table's pixels change between two looks while the demo meters report."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageChops
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

TOKEN = "test-token-4f1c9a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status_of(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError:
        return 0  # not listening yet


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    env = dict(os.environ, IOTMETER_HOME=str(tmp_path / "home"),
               IOTMETER_FIRMWARE_LISTEN="127.0.0.1:0", IOTMETER_SERVE_TOKEN=TOKEN)
    env.pop("IOTMETER_CONFIG", None)
    process = subprocess.Popen([sys.executable, "-m", "iotmeter_tui", "serve", "--port",
                                str(port)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "iotmeter serve: the dashboard on http://localhost:" in line, line
        assert TOKEN not in line, "a token from the environment is not printed"
        deadline = time.monotonic() + 30
        while status_of(f"http://127.0.0.1:{port}/") == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def chromium(profile: Path) -> webdriver.Chrome:
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                "--window-size=1280,900"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


def table_region(png: bytes) -> Image.Image:
    """The screenshot without the status line and the footer: the fleet's rows."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    width, height = image.size
    return image.crop((0, int(height * 0.08), width, int(height * 0.85)))


def test_the_dashboard_in_a_browser_is_live_and_needs_the_token(server: int,
                                                                tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{server}"
    assert status_of(f"{base}/") == 401
    assert status_of(f"{base}/static/js/textual.js") == 401
    assert status_of(f"{base}/ws", {"Authorization": "Bearer wrong"}) == 401
    assert status_of(f"{base}/ws", {"Authorization": f"Bearer {TOKEN}",
                                    "Origin": "http://evil.example"}) == 403

    driver = chromium(tmp_path / "profile")
    try:
        driver.get(f"{base}/?token={TOKEN}")
        assert driver.current_url == f"{base}/", "the token leaves the address bar"
        assert "iotmeter" in driver.page_source  # the app's name on the loading card
        assert driver.find_elements("css selector", ".textual-terminal")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "-first-byte" not in (
                driver.find_element("tag name", "body").get_attribute("class") or ""):
            time.sleep(0.5)
        assert "-first-byte" in (driver.find_element("tag name", "body")
                                 .get_attribute("class") or ""), "the dashboard never painted"
        # Live: the rows change between two looks a few seconds apart, and keep content.
        changed = 0
        deadline = time.monotonic() + 90
        before = table_region(driver.get_screenshot_as_png())
        while time.monotonic() < deadline and changed < 2:
            time.sleep(2.5)
            after = table_region(driver.get_screenshot_as_png())
            box = ImageChops.difference(before, after).getbbox()
            # More than a cursor: a change spanning several rows of the table.
            if box is not None and box[3] - box[1] > 40:
                changed += 1
            before = after
        (tmp_path / "browser.png").write_bytes(driver.get_screenshot_as_png())
        assert changed >= 2, "the fleet did not change on screen: not live"
        colours = before.getcolors(maxcolors=1 << 16) or []
        assert len(colours) > 20, "the table region is empty"
    finally:
        driver.quit()
