"""A headless chromium driven by Selenium (Debian's `chromium` and `chromium-driver`; selenium from the `test`
extra): what the report's screenshot, its benchmark and its browser tests open pages with."""

from __future__ import annotations

import shutil
from contextlib import contextmanager

from pipelines.errors import JobError


def missing() -> str | None:
    """Why no headless chromium can be started here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    absent = [b for b in ("chromium", "chromedriver") if shutil.which(b) is None]
    if absent:
        return f"{' and '.join(absent)} not found on PATH (Debian: apt-get install chromium chromium-driver)"
    return None


@contextmanager
def headless_chromium(width: int = 1400, height: int = 1000):
    """A Selenium driver of a headless chromium whose pages are `width` x `height` CSS px; quit on exit."""
    why = missing()
    if why:
        raise JobError(f"no headless chromium: {why}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
              f"--window-size={width},{height}"):
        opts.add_argument(a)
    opts.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        # --window-size includes the window's frame: the page itself gets exactly width x height.
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        yield driver
    finally:
        driver.quit()
