"""Screenshots of TensorBoard in a real browser: the demo's study as a user sees it.

    python demo/train_resnet.py                  # the study, runs/cpu on a machine without CUDA
    python docs/screenshot.py runs/cpu           # docs/tensorboard.png and docs/tensorboard-hparams.png

Starts `tensorboard --logdir STUDY` on a free local port, waits until it has read every run to its last
step (TensorBoard reads event files in the background and draws whatever it has read), then has headless
Chromium (`apt-get install chromium`; another Chromium or Chrome with --chromium PATH)
screenshot the Custom Scalars tab (the seed's superimposed charts of the three main runs) and the HParams
tab (the sweep: architecture, peak η, seed → test accuracy). Chromium's --virtual-time-budget lets the
page run until its data has arrived before the screenshot is taken.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

DOCS = Path(__file__).resolve().parent
TABS = {"custom_scalars": "tensorboard.png", "hparams": "tensorboard-hparams.png"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def last_points(study: Path) -> dict[str, tuple[str, int]]:
    """Per run (its path relative to the study, as TensorBoard names it), a scalar tag and the last step any
    of its scalars reached: what TensorBoard must have read before the run is drawn whole."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    last = {}
    for run_dir in sorted({p.parent for p in study.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        acc.Reload()
        steps = {tag: acc.Scalars(tag)[-1].step for tag in acc.Tags()["scalars"]}
        if steps:
            tag = max(steps, key=steps.get)
            last[run_dir.relative_to(study).as_posix()] = (tag, steps[tag])
    return last


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)
    except (OSError, ValueError):
        return None


def wait_until_read(url: str, last: dict[str, tuple[str, int]], timeout: float = 900.0) -> None:
    """Poll TensorBoard until it has read every run to its last step (it reads event files in the background,
    and draws what it has so far)."""
    deadline, waiting = time.monotonic() + timeout, list(last)
    while time.monotonic() < deadline:
        waiting = []
        for run, (tag, step) in last.items():
            query = urllib.parse.urlencode({"run": run, "tag": tag})
            points = _get(f"{url}/data/plugin/scalars/scalars?{query}") or []
            if not points or points[-1][1] < step:
                waiting.append(run)
        if not waiting:
            return
        time.sleep(5.0)
    raise SystemExit(f"TensorBoard at {url} had not read {', '.join(waiting)} after {timeout:.0f} s.")


def screenshot(chromium: str, url: str, out: Path, width: int, height: int, wait_ms: int) -> None:
    """One headless Chromium screenshot of url after wait_ms of page time."""
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1",
         f"--window-size={width},{height}", f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url],
        check=True, capture_output=True, timeout=wait_ms / 1000 + 120,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", type=Path, help="the study directory, e.g. runs/cpu")
    parser.add_argument("--out", type=Path, default=DOCS, help="folder for the PNGs (default docs/)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"),
                        help="the browser to run headless (default: chromium on PATH)")
    parser.add_argument("--size", default="1600x1000", help="window size, WIDTHxHEIGHT")
    parser.add_argument("--wait-ms", type=int, default=20_000, help="page time before each screenshot")
    args = parser.parse_args(argv)
    if not args.chromium:
        parser.error("no chromium on PATH: apt-get install chromium, or pass --chromium PATH")
    last = last_points(args.study)
    if not last:
        parser.error(f"{args.study} holds no TensorBoard scalars: run the demo first")
    width, height = (int(v) for v in args.size.split("x"))
    port = free_port()
    url = f"http://localhost:{port}"
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(args.study), "--port", str(port),
               "--load_fast", "false"]
    board = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_read(url, last)
        args.out.mkdir(parents=True, exist_ok=True)
        for tab, name in TABS.items():
            screenshot(args.chromium, f"{url}/?darkMode=false#{tab}", args.out / name, width, height, args.wait_ms)
            print(args.out / name)
    finally:
        board.terminate()
        board.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
