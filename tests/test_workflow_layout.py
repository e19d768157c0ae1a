"""The shipped example workflows open with no node over another: every node's box (its title bar
included, as the frontend draws it) is apart from every other's, and each box is at least as tall
as its slots and widgets need. The browser test checks the same on the real frontend's own
bounds (tests/test_browser.py)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))
TITLE = 30  # LiteGraph.NODE_TITLE_HEIGHT: the title bar sits above `pos`
SLOT, WIDGET = 20, 24  # NODE_SLOT_HEIGHT; NODE_WIDGET_HEIGHT 20 + 4 spacing
GAP = 10
#: nodes the frontend draws taller than their slots and widgets: LoadImage's image preview (the
#: ComfyUI frontend pinned by 0.3.64 measured 314 px below the title bar, tests/test_browser.py)
MIN_HEIGHT = {"LoadImage": 314}


def boxes(workflow: dict) -> dict[str, tuple[float, float, float, float]]:
    """{"id type": (left, top, right, bottom)} with the title bar."""
    return {f"{n['id']} {n.get('title', n['type'])}": (n["pos"][0], n["pos"][1] - TITLE, n["pos"][0] + n["size"][0],
                                                      n["pos"][1] + n["size"][1]) for n in workflow["nodes"]}


def overlaps(a, b) -> bool:
    return a[0] < b[2] + GAP and b[0] < a[2] + GAP and a[1] < b[3] + GAP and b[1] < a[3] + GAP


def test_the_overlap_check_catches_an_overlap():
    assert overlaps((0, 0, 100, 100), (50, 50, 150, 150)) and not overlaps((0, 0, 100, 100), (200, 0, 300, 100))
    assert overlaps((0, 0, 100, 100), (0, 105, 100, 200))  # closer than the gap


def test_there_are_workflows():
    assert len(WORKFLOWS) == 6


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_no_two_nodes_overlap(path):
    found = boxes(json.loads(path.read_text()))
    clashes = [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(found.items(), 2) if overlaps(box_a, box_b)]
    assert not clashes, f"{path.name}: overlapping nodes {clashes}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_each_node_is_tall_enough_for_its_widgets(path):
    for node in json.loads(path.read_text())["nodes"]:
        if node["type"] == "Note":
            continue
        links = sum(1 for i in node["inputs"] if i.get("widget") is None)
        widgets = len(node["widgets_values"]) - sum(1 for v in node["widgets_values"] if v in ("fixed", "image"))
        need = max(max(links, len(node["outputs"])) * SLOT + widgets * WIDGET, MIN_HEIGHT.get(node["type"], 0))
        assert node["size"][1] >= need, f"{path.name}: {node['type']} is {node['size'][1]} px tall, needs {need}"
