"""Take the dashboard screenshots in docs/ (light and dark) against a running gateway.

    python scripts/dashboard_screenshots.py [GATEWAY_URL]   # default $PETRI_URL or :8000

Drives Debian's /usr/bin/chromium (scripts/ensure-browser.sh) with Playwright. Creates one
sandbox, starts a service and runs a few programs in it, takes the pictures and deletes the sandbox.
"""

from __future__ import annotations

import io
import os
import sys
import zipfile
from pathlib import Path

import httpx
from playwright.sync_api import Page, sync_playwright

DOCS = Path(__file__).resolve().parent.parent / "docs"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update"]
SHOWCASE = '''import sys, time

print("Fitting 3 models on 1,200 rows")
for epoch in range(1, 9):
    loss = 1 / epoch
    print(f"epoch {epoch}/8  loss={loss:.3f}")
    if epoch == 5:
        print("warning: learning rate decayed", file=sys.stderr)
    time.sleep(0.15)
print("saved model.pkl")
'''


def run(page: Page, mode: str, source: str) -> None:
    page.check(f"input[name=mode][value={mode}]")
    page.fill("#source", source)
    before = page.url
    page.click("#run")
    # The new run's view first: the previous run's "ended" must not count as this one's.
    page.wait_for_url(lambda u: u != before and "/executions/" in u)
    page.wait_for_selector("#run-conn[data-state=ended]", timeout=120_000)


def main() -> None:
    url = (sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PETRI_URL", "")) or (
        "http://127.0.0.1:8000")
    with httpx.Client(base_url=url, timeout=120) as api:
        sid = api.post("/v1/sandboxes", json={"language": "python"}).json()["id"]
        packed = io.BytesIO()
        with zipfile.ZipFile(packed, "w") as z:
            z.writestr("data/rows.csv", "a,b\n" * 1200)
            z.writestr("train.py", "print('train')\n")
            z.writestr("README.md", "# demo\n")
        api.post(f"/v1/sandboxes/{sid}/upload", content=packed.getvalue(),
                 headers={"content-type": "application/zip"})
        # A service (serve mode), so the Services panel shows one with its preview link.
        api.post(f"/v1/sandboxes/{sid}/services",
                 json={"command": "python3 -m http.server 8080", "port": 8080})
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                for scheme in ("light", "dark"):
                    context = browser.new_context(viewport={"width": 1400, "height": 900},
                                                  color_scheme=scheme, device_scale_factor=1)
                    page = context.new_page()
                    page.goto(f"{url}/#/sandboxes/{sid}")
                    page.wait_for_selector("#gateway-state[data-state=connected]")
                    page.wait_for_selector("#run:not([disabled])")
                    if scheme == "light":
                        run(page, "command", "ls data && python3 -c 'import sys; sys.exit(2)'")
                        page.check("input[name=mode][value=code]")
                        page.fill("#source", "while True: pass")
                        page.click("#run")
                        page.wait_for_selector("#run-conn[data-state=live]")
                        page.click("#kill")
                        page.wait_for_selector("#run-conn[data-state=ended]")
                    run(page, "code", SHOWCASE)
                    page.wait_for_timeout(1200)  # the executions list catches up
                    page.evaluate("document.activeElement.blur()")
                    page.screenshot(path=str(DOCS / f"dashboard-{scheme}.png"), full_page=True)
                    context.close()
                browser.close()
        finally:
            api.delete(f"/v1/sandboxes/{sid}")
    print(f"wrote {DOCS}/dashboard-light.png and dashboard-dark.png")


if __name__ == "__main__":
    main()
