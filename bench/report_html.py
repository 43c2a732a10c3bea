"""Issue 21's browser check of oof/report.html in headless Chromium (Debian's `chromium` package; see README).

For the page given: every section (#summary, #gallery, #labels, #test) is loaded and any console message is an
error; the gallery filter is applied through the URL (#gallery?label=L&kind=missed, for each label) and the cards
Chromium leaves visible must be exactly the cards whose data-missed names L; then the time of a whole headless
load (--dump-dom, the browser's start included) is measured `--tries` times and the median printed, beside that of
an empty page (the browser's start alone). With --shots DIR, screenshots of the gallery and of the per-label view are
written there (64-colour PNGs).

Usage: python bench/report_html.py PAGE [--tries 5] [--shots DIR] [--width 1280] [--height 900]
Exit code 1 when a console message or a wrong filter is seen.
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]
CARD = re.compile(r'<div class="card" data-row="(\d+)"([^>]*)>')


def chromium(url: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([BROWSER, *FLAGS, *extra, url], capture_output=True, text=True, timeout=120)


def console(proc: subprocess.CompletedProcess) -> list[str]:
    """The page's console lines in Chromium's log (what a script error or a console.log writes)."""
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("page", type=Path)
    parser.add_argument("--tries", type=int, default=5)
    parser.add_argument("--shots", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args()
    url, failed = args.page.resolve().as_uri(), False
    print(f"{args.page}: {args.page.stat().st_size / 1e6:.2f} MB; browser {subprocess.run([BROWSER, '--version'], capture_output=True, text=True).stdout.strip()}")
    for section in ("summary", "gallery", "labels", "test"):
        proc = chromium(f"{url}#{section}", "--dump-dom")
        messages = console(proc)
        failed |= bool(messages) or proc.returncode != 0
        print(f"#{section}: exit {proc.returncode}, console messages: {len(messages)}", *messages, sep="\n  ")
    for label in (1, 2, 3, 8, 10, 15, 18):
        dom = chromium(f"{url}#gallery?label={label}&kind=missed", "--dump-dom").stdout
        cards = CARD.findall(dom)
        want = {row for row, attrs in cards if str(label) in re.search(r'data-missed="([^"]*)"', attrs).group(1).split()}
        shown = {row for row, attrs in cards if " hidden" not in attrs}
        failed |= shown != want
        print(f"#gallery?label={label}&kind=missed: {len(shown)} of {len(cards)} cards shown, "
              f"{'exactly' if shown == want else 'NOT'} the cards that miss label {label}")
    blank = args.page.resolve().with_name(".blank.html")
    blank.write_text("<!DOCTYPE html><title>blank</title>")
    for name, target in (("an empty page (the browser's own start)", blank.as_uri()), (args.page.name, f"{url}#gallery")):
        seconds = []
        for _ in range(args.tries):
            start = time.perf_counter()
            chromium(target, "--dump-dom")
            seconds.append(time.perf_counter() - start)
        print(f"headless load of {name} with --dump-dom, {args.tries} tries: median {statistics.median(seconds):.2f} s "
              f"(min {min(seconds):.2f}, max {max(seconds):.2f})")
    blank.unlink()
    if args.shots:
        args.shots.mkdir(parents=True, exist_ok=True)
        for section in ("gallery", "labels"):
            shot = args.shots / f"report_{section}.png"
            chromium(f"{url}#{section}", f"--screenshot={shot}", f"--window-size={args.width},{args.height}")
            Image.open(shot).convert("RGB").quantize(64).save(shot, optimize=True)  # a small PNG for the README
            print(f"screenshot {shot}: {shot.stat().st_size / 1e3:.0f} kB")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
