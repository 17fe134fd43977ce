#!/usr/bin/env python
"""Render a medbalance HTML report in headless Chromium and save a screenshot (PNG).

    python scripts/render_report.py medbalance-demo/report.html [--out shot.png] [--width 1280] [--height 4000]

Needs the Debian package ``chromium`` (``apt-get install chromium``). The report is opened from the local
file with networking disabled flags, so the screenshot also shows whether it renders offline.
Exit codes: 0 ok, 2 bad input / chromium missing, 1 chromium failed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def render(html: Path, out: Path, width: int = 1280, height: int = 4000, timeout: float = 120.0) -> Path:
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError(
            "chromium not found (looked for " + ", ".join(BROWSERS) + "); install it with `apt-get install chromium`"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medbalance-chromium-") as profile:
        cmd = [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
            f"--user-data-dir={profile}", f"--screenshot={out.resolve()}", f"--window-size={width},{height}",
            html.resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not out.is_file():
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-5:])
        raise RuntimeError(f"chromium exited with code {proc.returncode} and wrote no screenshot:\n{tail}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html", type=Path, help="report HTML file")
    ap.add_argument("--out", type=Path, default=None, help="screenshot PNG (default: next to the report)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=4000)
    args = ap.parse_args(argv)
    if not args.html.is_file():
        print(f"error: {args.html}: report file not found", file=sys.stderr)
        return 2
    out = args.out or args.html.with_name(args.html.stem + "_screenshot.png")
    try:
        render(args.html, out, args.width, args.height)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
