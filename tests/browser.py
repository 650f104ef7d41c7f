"""Driving the web demo in Debian's headless Chromium (selenium and chromedriver), for the tests and the README's
screenshot:

    python tests/browser.py http://127.0.0.1:7860 docs/examples/synthetic.png docs/demo.png
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM, CHROMEDRIVER = "chromium", "chromedriver"  # Debian's packages chromium and chromium-driver
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # root in a container
    "--disable-gpu",
    "--disable-dev-shm-usage",  # containers' /dev/shm is small
    "--disable-background-networking",  # no network here but the server's
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
# the first video player's state, once it has a source: [src, readyState, duration]
VIDEO_STATE = "const v = document.querySelector('#video-0 video'); return v && v.src ? [v.src, v.readyState, v.duration] : null;"


def missing_browser() -> str | None:
    """What is missing to drive a browser, or None."""
    missing = [name for name in (CHROMIUM, CHROMEDRIVER) if shutil.which(name) is None]
    if missing:
        return f"{' and '.join(missing)} not found: apt-get install chromium chromium-driver"
    return None


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 1000):
    """A headless Chromium session with a profile of its own, closed afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which(CHROMIUM)
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        # an explicit chromedriver: selenium would otherwise try to download one
        driver = webdriver.Chrome(service=Service(shutil.which(CHROMEDRIVER)), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def press_animate(driver, url: str, photo, *, timeout: float) -> None:
    """Open the demo, upload `photo` and press Animate."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout)
    driver.get(url)
    upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#photo input[type=file]"))
    upload.send_keys(str(Path(photo).resolve()))  # chromedriver takes absolute paths only
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo img"))  # the upload has arrived
    driver.find_element(By.ID, "animate").click()


def animate_in_page(driver, url: str, photo, *, timeout: float = 120) -> list:
    """Animate `photo` in the page and wait until the first video has a source that plays: returns [src,
    readyState, duration in seconds]."""
    from selenium.webdriver.support.ui import WebDriverWait

    press_animate(driver, url, photo, timeout=timeout)

    def playable(d):
        state = d.execute_script(VIDEO_STATE)
        return state if state and state[2] and state[2] > 0 else None

    return WebDriverWait(driver, timeout).until(playable)


def error_in_page(driver, url: str, photo, *, timeout: float = 120) -> str:
    """Animate `photo` in the page, expecting it to fail: returns the text of the error the page shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    press_animate(driver, url, photo, timeout=timeout)

    def shown(d):
        return "\n".join(toast.text for toast in d.find_elements(By.CSS_SELECTOR, ".toast-body")).strip() or None

    return WebDriverWait(driver, timeout).until(shown)


def screenshot(url: str, photo, path) -> None:
    """The page with a generated video, top to bottom, as a PNG."""
    with chromium(height=1400) as driver:
        animate_in_page(driver, url, photo)
        driver.execute_script("document.querySelector('#video-0 video').pause(); window.scrollTo(0, 0);")
        time.sleep(1)  # let the player settle on a frame
        driver.save_screenshot(str(path))


if __name__ == "__main__":
    screenshot(*sys.argv[1:4])
