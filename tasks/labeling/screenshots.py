"""Screenshots of a running labeling app with Debian's chromium (headless, offline) through Playwright:
the labeling page with a task half ranked, and the stats page. The README's images come from here.

    python -m tasks.labeling.screenshots --url http://127.0.0.1:8600 --out docs --labeler Ada
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
# No network here: nothing in the background may try to reach one.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def launch(playwright: Any) -> Any:
    """Debian's chromium (never a browser Playwright downloads)."""
    if not Path(CHROMIUM).exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing: apt-get install -y chromium (bin/test does it)")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)


def labeling_page(page: Any, path: Path, picks: int = 2) -> None:
    """Screenshot the current task after clicking its first `picks` responses (the ranking is not submitted)."""
    buttons = page.locator("#responses .response")
    for pos in range(picks):
        buttons.nth(pos).click()
    page.screenshot(path=str(path), full_page=True)
    page.click("#undo")
    page.click("#undo")


def take(url: str, out: Path, labeler: str) -> list[Path]:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    shots = [out / "labeling-page.png", out / "labeling-stats.png"]
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1100, "height": 820})
        page.goto(url)
        page.fill("#name", labeler)
        page.keyboard.press("Enter")
        page.wait_for_selector("#responses .response")
        labeling_page(page, shots[0])
        page.goto(f"{url}/stats")
        page.screenshot(path=str(shots[1]), full_page=True)
        browser.close()
    return shots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8600")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--labeler", default="Ada")
    args = parser.parse_args()
    for shot in take(args.url, args.out, args.labeler):
        print(shot)


if __name__ == "__main__":
    main()
