"""A PNG of a written report as a browser shows it (`harmony report PREFIX --screenshot FILE`): the row table, or
one row's detail view. Local prefixes only: the browser opens the page and its images from disk."""

from __future__ import annotations

import time
from pathlib import Path

from pipelines.errors import JobError
from pipelines.io.storage import protocol_of

WAIT_S = 20.0  # for the page's images to decode


def screenshot(report: str, out: str, row: int | None = None, width: int = 1400, height: int = 1000) -> Path:
    """Open `report` (report.html on local disk) in headless chromium and save what it shows to `out` (PNG, or
    JPEG for a .jpg name): with `row`, that row's detail view; else the page scrolled to its row table. Returns
    the picture's path."""
    from pipelines.report.browser import headless_chromium

    if protocol_of(report) not in ("file", "local"):
        raise JobError(f"--screenshot needs the report on local disk, not {report}")
    page = Path(report.removeprefix("file://")).resolve()
    if not page.is_file():
        raise JobError(f"no report at {page}")
    target = Path(out).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    with headless_chromium(width, height) as driver:
        driver.get(page.as_uri() + (f"#row={int(row)}" if row is not None else ""))
        if row is not None:
            if not driver.find_element("id", "detail").is_displayed():
                raise JobError(f"the report has no row {row}")
        else:
            driver.execute_script("document.getElementById('rows').scrollIntoView()")
        deadline = time.monotonic() + WAIT_S
        while not driver.execute_script("return [...document.images].every((i) => i.complete)"):
            if time.monotonic() > deadline:
                break  # a picture of what has loaded beats none
            time.sleep(0.1)
        png = driver.get_screenshot_as_png()
    if target.suffix.lower() in (".jpg", ".jpeg"):  # a smaller file for a README
        import io

        from PIL import Image

        Image.open(io.BytesIO(png)).convert("RGB").save(target, format="JPEG", quality=85)
    else:
        target.write_bytes(png)
    return target
