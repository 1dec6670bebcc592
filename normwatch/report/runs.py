"""Read normwatch runs back from their TensorBoard event files.

A *run* is a directory holding ``events.out.tfevents.*`` files. normwatch writes per-layer
scalars ``normwatch/<metric>/<layer>`` (``<layer>`` is a qualified module name and may contain
dots) and a text summary ``normwatch/config``; the demo adds ``train/loss``, ``train/acc``,
``test/acc``, ``lr``, a text ``demo/config`` and ``config.json`` / ``result.json`` files (its sweep
runs hold only ``sweep/test_acc`` and the JSON files). The per-layer scalars, or a sweep run's
final accuracy, are what the report needs; everything else refines what it can say.

Events are read with tensorboard's own :class:`EventAccumulator` (no TensorFlow), keeping every
event (``size_guidance`` 0) and never purging: when a step appears twice (a resumed run) the
value written last wins. A ``curves.json`` next to them (the demo's eqinit, large-batch and smooth runs)
adds its scalars and texts.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from normwatch import metrics

#: Prefix of every tag normwatch writes.
PREFIX = "normwatch"
#: Event tag of ``writer.add_text("normwatch/config", json)``.
CONFIG_TAG = "normwatch/config/text_summary"
#: Event tag of the demo's ``writer.add_text("demo/config", json)``.
DEMO_CONFIG_TAG = "demo/config/text_summary"
#: Scalars holding test accuracy: the demo's main runs' and its sweep runs' (the HParams metric).
TEST_ACC_TAGS = ("test/acc", "sweep/test_acc")
#: Per-layer hyperparameter metrics (``normwatch/lr/<layer>`` ...), from the registry.
HYPER_METRICS = metrics.names("hyper")


@dataclass(frozen=True)
class Series:
    """One scalar series: sorted unique optimizer steps and their values.

    Attributes:
        steps: optimizer steps (0-based), shape ``(n,)``, strictly increasing.
        values: the logged values as float64, shape ``(n,)``.
    """

    steps: NDArray[np.int64]
    values: NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.steps.size)

    def between(self, start: int, stop: int) -> Series:
        """The points with ``start <= step <= stop`` (both ends included)."""
        keep = (self.steps >= start) & (self.steps <= stop)
        return Series(self.steps[keep], self.values[keep])

    def last(self) -> float:
        """The value at the last logged step (NaN when empty)."""
        return float(self.values[-1]) if self.values.size else math.nan


def make_series(steps: Iterable[int], values: Iterable[float]) -> Series:
    """Sort by step and keep the value written last for each step.

    Example:
        >>> s = make_series([2, 0, 2], [5.0, 1.0, 7.0])
        >>> s.steps.tolist(), s.values.tolist()
        ([0, 2], [1.0, 7.0])
    """
    st = np.asarray(list(steps), dtype=np.int64)
    va = np.asarray(list(values), dtype=np.float64)
    order = np.argsort(st, kind="stable")
    st, va = st[order], va[order]
    keep = np.ones(st.size, dtype=bool)
    if st.size:
        keep[:-1] = st[1:] != st[:-1]
    return Series(st[keep], va[keep])


def align(a: Series, b: Series) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    """The steps two series share and both series' values there."""
    steps, ia, ib = np.intersect1d(a.steps, b.steps, assume_unique=True, return_indices=True)
    return steps, a.values[ia], b.values[ib]


@dataclass
class Run:
    """Everything the report reads from one run directory.

    Attributes:
        path: the run directory.
        name: a short label (the path relative to the common root of all runs read).
        metrics: ``metrics[metric][layer]``, the ``normwatch/<metric>/<layer>`` series.
        scalars: every other scalar tag (``test/acc``, ``lr``, ...).
        config: the parsed ``normwatch/config`` JSON, or ``None`` if absent.
        demo: the demo's ``demo/config`` JSON merged over ``config.json`` (``{}`` if neither).
        result: ``result.json`` if present, else ``{}``.
        summary_only: read from ``config.json``/``result.json`` alone (a sweep run; event files not read).
    """

    path: Path
    name: str
    metrics: dict[str, dict[str, Series]] = field(default_factory=dict)
    scalars: dict[str, Series] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    demo: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    summary_only: bool = False

    # ---------------------------------------------------------------- layers and series
    @property
    def layers(self) -> list[str]:
        """Layers with normwatch scalars, in the config's order, then in the order first logged.

        If the config lists a layer's ``norm`` as empty / ``"none"`` (not scale-invariant), the
        layer is left out: every claim the report tests is about scale-invariant weights.
        """
        seen: dict[str, None] = {}
        for per_layer in self.metrics.values():
            for layer in per_layer:
                seen.setdefault(layer, None)
        order: list[str] = []
        excluded: set[str] = set()
        for entry in (self.config or {}).get("layers", []) or []:
            if not isinstance(entry, dict) or "name" not in entry:
                continue
            norm = entry.get("norm", "present")
            if norm in (None, "", "none", False):
                excluded.add(str(entry["name"]))
            elif entry["name"] in seen:
                order.append(str(entry["name"]))
        order += [layer for layer in seen if layer not in order]
        return [layer for layer in order if layer not in excluded]

    def series(self, metric: str, layer: str) -> Series | None:
        """``normwatch/<metric>/<layer>``, or ``None`` if it was not logged (or is empty)."""
        s = self.metrics.get(metric, {}).get(layer)
        return s if s is not None and len(s) else None

    def layers_with(self, *metrics: str) -> list[str]:
        """The layers (in :attr:`layers` order) that logged every one of ``metrics``."""
        return [layer for layer in self.layers if all(self.series(m, layer) for m in metrics)]

    def hyper(self, layer: str) -> tuple[Series, Series, Series] | None:
        """(lr, weight_decay, momentum) series for ``layer`` on the steps where lr was logged.

        Falls back to the demo's ``lr`` scalar and the run config's ``weight_decay`` /
        ``momentum`` for what normwatch did not log. ``None`` if lr or weight decay is unknown.
        """
        lr = self.series("lr", layer) or self.scalars.get("lr")
        if lr is None or not len(lr):
            return None

        def on_lr_steps(metric: str, key: str, default: float | None) -> Series | None:
            s = self.series(metric, layer)
            if s is not None:
                idx = np.clip(np.searchsorted(s.steps, lr.steps, side="right") - 1, 0, len(s) - 1)
                return Series(lr.steps, s.values[idx])
            value = _as_float(self.demo.get(key), default)
            return None if value is None else Series(lr.steps, np.full(len(lr), value))

        wd = on_lr_steps("weight_decay", "weight_decay", None)
        mom = on_lr_steps("momentum", "momentum", 0.0 if self.family in ("sgd", "lars") else None)
        if wd is None or mom is None:
            return None
        return lr, wd, mom

    # ---------------------------------------------------------------- run description
    @property
    def family(self) -> str:
        """Optimizer family: normwatch's config, else the demo's optimizer, else ``"unknown"``."""
        fam = (self.config or {}).get("family")
        if isinstance(fam, str) and fam:
            return fam
        opt = str(self.demo.get("optimizer", "")).lower()
        return opt if opt in ("sgd", "lars", "adam", "adamw") else "unknown"

    @property
    def dampening(self) -> float:
        """SGD dampening from normwatch's config (0 if absent)."""
        return _as_float((self.config or {}).get("dampening"), 0.0) or 0.0

    @property
    def momentum(self) -> float | None:
        """The run's typical momentum: median of every logged value, else the demo's config."""
        values = [s.values for s in self.metrics.get("momentum", {}).values() if len(s)]
        if values:
            return float(np.median(np.concatenate(values)))
        return _as_float(self.demo.get("momentum"), None)

    @property
    def nesterov(self) -> bool:
        """Nesterov momentum: normwatch's config (its first param group), else the demo's config."""
        value = (self.config or {}).get("nesterov", self.demo.get("nesterov", False))
        return bool(value)

    @property
    def test_images(self) -> int | None:
        """The test-set size behind ``test/acc`` (the demo's ``test_images``), ``None`` if not recorded."""
        value = _as_float(self.demo.get("test_images", self.result.get("test_images")), None)
        return int(value) if value is not None and value > 0 else None

    @property
    def part(self) -> str | None:
        """The demo's ``part`` ("sgdm", "sgd", "lars", "sweep"), if known."""
        part = self.demo.get("part")
        return str(part) if part is not None else None

    @property
    def arch(self) -> str | None:
        """The demo's architecture name, if known."""
        arch = self.demo.get("arch")
        return str(arch) if arch is not None else None

    @property
    def peak_lr(self) -> float | None:
        """Peak learning rate: the demo's ``peak_lr``, else the largest logged lr."""
        value = _as_float(self.demo.get("peak_lr"), None)
        if value is not None:
            return value
        lrs = [s.values for s in self.metrics.get("lr", {}).values() if len(s)]
        if "lr" in self.scalars:
            lrs.append(self.scalars["lr"].values)
        return float(max(np.max(v) for v in lrs)) if lrs else None

    @property
    def final_test_acc(self) -> float | None:
        """Test accuracy at the last logged step of ``test/acc`` (a demo sweep run's ``sweep/test_acc``),
        else from ``result.json``."""
        for tag in TEST_ACC_TAGS:
            s = self.scalars.get(tag)
            if s is not None and len(s):
                return s.last()
        for key in ("test_acc", "final_test_acc", "test/acc", "acc"):
            value = _as_float(self.result.get(key), None)
            if value is not None:
                return value
        return None

    @property
    def has_normwatch(self) -> bool:
        """Whether the run logged any normwatch per-layer metric (besides hyperparameters)."""
        return any(m not in HYPER_METRICS and per for m, per in self.metrics.items())

    @property
    def is_sweep_point(self) -> bool:
        """A run of the demo's learning-rate sweep with a peak lr and a final test accuracy."""
        return self.part == "sweep" and self.peak_lr is not None and self.final_test_acc is not None

    def describe(self) -> str:
        """One line: optimizer, momentum, peak lr, steps, layers and final test accuracy."""
        opt = (self.config or {}).get("optimizer") or self.demo.get("optimizer") or self.family
        parts = [f"optimizer {opt} (family {self.family})"]
        if self.arch is not None:
            parts.append(f"arch {self.arch}")
        if self.momentum is not None:
            parts.append(f"momentum {self.momentum:g}")
        if self.peak_lr is not None:
            parts.append(f"peak lr {self.peak_lr:g}")
        if self.has_normwatch:
            steps = max(int(s.steps[-1]) + 1 for per in self.metrics.values() for s in per.values() if len(s))
            parts.append(f"{steps} steps, {len(self.layers)} layers")
            others = [int(s.steps[-1]) for s in self.scalars.values() if len(s)]
            if others and max(others) >= steps:
                parts.append(
                    f"normwatch's scalars end at step {steps - 1} but other scalars go on to step {max(others)}"
                )
            if self.config is None:
                parts.append("no normwatch/config text")
        elif self.summary_only:
            parts.append("final accuracy from result.json (event files not read)")
        else:
            parts.append("no normwatch scalars")
        if self.final_test_acc is not None:
            parts.append(f"final test acc {self.final_test_acc:.4g}")
        return ", ".join(parts)


def _as_float(value: Any, default: float | None) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


def _has_events(path: Path) -> bool:
    return any(p.is_file() and "tfevents" in p.name for p in path.iterdir())


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Expand the given directories into run directories.

    A directory that holds event files is a run. Any other directory is a study: every
    directory below it that holds event files is a run (not descending further into a run).

    Args:
        paths: run or study directories.

    Returns:
        Run directories, each once, in the given order (sorted within a study).

    Raises:
        FileNotFoundError: a path is not a directory.
        ValueError: a path holds no event files at any depth.
    """
    found: dict[Path, None] = {}
    for raw in paths:
        root = Path(raw)
        if not root.is_dir():
            raise FileNotFoundError(f"Expected a run directory, but got {str(raw)!r}, which is not a directory.")
        if _has_events(root):
            found.setdefault(root, None)
            continue
        before = len(found)
        for dirpath, dirnames, _ in os.walk(root):
            dirnames.sort()
            here = Path(dirpath)
            if here != root and _has_events(here):
                found.setdefault(here, None)
                dirnames.clear()
        if len(found) == before:
            raise ValueError(f"No TensorBoard event files under {str(raw)!r}.")
    return list(found)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _parse_json_text(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Read one run directory.

    Args:
        path: a directory holding ``events.out.tfevents.*`` files.
        name: label for the run (defaults to the directory name).

    Returns:
        The :class:`Run`; scalars written with ``new_style=True`` (tensor events of the scalars
        plugin) are read too.
    """
    # Imported here so that importing normwatch.report stays cheap.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    path = Path(path)
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0}, purge_orphaned_data=False)
    acc.Reload()
    tags = acc.Tags()
    raw: dict[str, Series] = {}
    texts: dict[str, str] = {}
    for tag in tags.get("scalars", []):
        events = acc.Scalars(tag)
        raw[tag] = make_series((e.step for e in events), (e.value for e in events))
    for tag in tags.get("tensors", []):
        plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
        events = acc.Tensors(tag)
        if plugin == "scalars" and tag not in raw:
            values = [float(tensor_util.make_ndarray(e.tensor_proto).reshape(-1)[0]) for e in events]
            raw[tag] = make_series((e.step for e in events), values)
        elif plugin == "text" and events:
            strings = events[-1].tensor_proto.string_val
            if strings:
                texts[tag] = strings[0].decode("utf-8", errors="replace")

    _add_curves(path, raw, texts)
    run = Run(path=path, name=name or path.name)
    for tag, series in raw.items():
        parts = tag.split("/", 2)
        if len(parts) == 3 and parts[0] == PREFIX:
            run.metrics.setdefault(parts[1], {})[parts[2]] = series
        else:
            run.scalars[tag] = series
    if CONFIG_TAG in texts:
        run.config = _parse_json_text(texts[CONFIG_TAG])
    run.demo = _read_json(path / "config.json")
    run.demo.update(_parse_json_text(texts.get(DEMO_CONFIG_TAG, "")) or {})
    run.result = _read_json(path / "result.json")
    return run


def _add_curves(path: Path, raw: dict[str, Series], texts: dict[str, str]) -> None:
    """Scalars and texts from ``curves.json`` (the demo's issue-17 parts keep normwatch's curves there, out of
    TensorBoard): ``{"scalars": {tag: [steps, values]}, "texts": {tag: text}}``; event files win a clash."""
    curves = _read_json(path / "curves.json")
    for tag, pair in (curves.get("scalars") or {}).items():
        if isinstance(pair, list) and len(pair) == 2 and tag not in raw:
            raw[tag] = make_series(pair[0], pair[1])
    for tag, text in (curves.get("texts") or {}).items():
        texts.setdefault(f"{tag}/text_summary", str(text))


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Expand ``paths`` with :func:`find_runs` and read every run.

    Runs are named by their path relative to the common root of all runs (a single run by its
    directory name). A sweep run (``config.json`` with ``part == "sweep"`` and a ``peak_lr``, and
    ``result.json`` with a ``test_acc``) is read from those two files alone when other runs are
    present: the sweep's figure and verdict need only its final accuracy, and skipping its event
    files keeps a large sweep fast.
    """
    dirs = find_runs(paths)
    if len(dirs) == 1:
        return [load_run(dirs[0])]
    root = Path(os.path.commonpath([str(d.resolve()) for d in dirs]))
    files = {d: (_read_json(d / "config.json"), _read_json(d / "result.json")) for d in dirs}
    has_main = any(config.get("part") != "sweep" for config, _ in files.values())
    runs = []
    for d in dirs:
        name = d.resolve().relative_to(root).as_posix()
        config, result = files[d]
        light = (
            has_main
            and config.get("part") == "sweep"
            and _as_float(config.get("peak_lr"), None) is not None
            and _as_float(result.get("test_acc"), None) is not None
        )
        runs.append(Run(path=d, name=name, demo=config, result=result, summary_only=True) if light
                    else load_run(d, name))
    return runs
