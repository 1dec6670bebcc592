"""The metric registry is the one list of metrics: the README's table and every tag written agree with it."""

import re
from pathlib import Path

import torch
import torch.nn.functional as F

import normwatch
from normwatch import metrics, tensorboard
from tests.models import seeded_batches, small_bn_net

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_table_is_the_registry() -> None:
    text = README.read_text()
    table = re.search(r"<!-- metrics table:.*?-->\n(.*?)\n<!-- end of metrics table -->", text, re.S)
    assert table is not None, "README.md lost its metrics table markers"
    assert table.group(1) == metrics.markdown_table()
    rows = [line.split("|")[1].strip(" `") for line in table.group(1).splitlines()[2:]]
    assert rows == [m.name for m in metrics.METRICS]


def test_every_tag_written_is_in_the_registry_and_every_kind_appears(tmp_path) -> None:
    """SGD with momentum and weight decay writes measured, split, theory and hyper tags, all registered."""
    model = small_bn_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    with normwatch.attach(model, opt, keep_history=True, logdir=str(tmp_path)) as watch:
        for x, y in seeded_batches(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    written = {tag.split("/")[1] for tag in watch.history}
    assert written <= set(metrics.BY_NAME)
    assert written == set(metrics.names("measured", "split", "theory", "hyper"))


def test_layout_charts_come_from_the_registry() -> None:
    layout = tensorboard.custom_layout(["conv"])
    assert set(layout) == {"normwatch: conv"}
    assert set(layout["normwatch: conv"]) == set(metrics.charts())
    assert metrics.charts()["shrink vs growth"] == ("shrink", "growth")
