"""The web extension in a real browser: ComfyUI with its own frontend (comfyui-frontend-package),
headless Chromium driven by Playwright. Loads workflow 3 (Train KronA), runs it on tiny models,
and checks that the live loss chart drew points; workflow 1 shows the trigger-word chips.
Every example workflow opens with no node over another on the frontend's own bounds, and is
photographed fitted to the view. Screenshots go to test-artifacts/browser/ (and to docs/screenshots/ with KRONA_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(_TESTS))

from helpers.comfy_server import frontend_package_root  # noqa: E402

ROOT = _TESTS.parent
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.comfy,
    pytest.mark.browser,  # runs without COMFYUI_PATH: skipped (tests/conftest.py)
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (Debian package chromium)"),
    pytest.mark.skipif(frontend_package_root() is None, reason="comfyui-frontend-package not installed"),
]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--window-size=1600,1000"]


@pytest.fixture(scope="module")
def server(example_server):
    # shared with test_comfy_workflows.py, with the example files (tests/conftest.py); it serves the real frontend
    # a returning user: no first-run template browser over the canvas
    # and nodes drawn in full at any zoom (no level-of-detail shapes), no minimap over the screenshots
    example_server.post_json("/settings", {"Comfy.TutorialCompleted": True, "LiteGraph.Canvas.MinFontSizeForLOD": 0,
                                           "Comfy.Minimap.Visible": False})
    return example_server


@pytest.fixture(scope="module")
def page(server):
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(server.url, wait_until="domcontentloaded")
        page.wait_for_function("() => window.app && window.app.graph && window.app.extensionManager !== undefined", timeout=120_000)
        page.wait_for_timeout(1500)
        page.keyboard.press("Escape")
        yield page
        browser.close()


def load_workflow(page, name: str, overrides: dict[str, dict] | None = None) -> None:
    data = json.loads((ROOT / "example_workflows" / name).read_text())
    page.evaluate("async (g) => { await window.app.loadGraphData(g); }", data)
    for node_type, values in (overrides or {}).items():
        page.evaluate(
            """([type, values]) => {
                for (const node of window.app.graph._nodes.filter(n => n.type === type)) {
                    for (const [name, value] of Object.entries(values)) {
                        const w = node.widgets.find(w => w.name === name);
                        if (w) { w.value = value; w.callback?.(value); }
                    }
                }
            }""",
            [node_type, values],
        )
    page.wait_for_timeout(500)


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    if os.environ.get("KRONA_UPDATE_SCREENSHOTS"):
        target = ROOT / "docs" / "screenshots" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return path


WORKFLOWS = sorted(p.name for p in (ROOT / "example_workflows").glob("*.json"))


@pytest.mark.parametrize("name", WORKFLOWS)
def test_example_workflow_opens_with_no_overlapping_nodes(page, name):
    load_workflow(page, name)
    boxes = page.evaluate("""() => window.app.graph._nodes.map(n => {
        const b = new Float32Array(4); n.getBounding(b); return [`${n.id} ${n.type}`, ...b]; })""")
    assert len(boxes) == len(json.loads((ROOT / "example_workflows" / name).read_text())["nodes"])
    clashes = [(a[0], b[0]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
               if a[1] < b[1] + b[3] and b[1] < a[1] + a[3] and a[2] < b[2] + b[4] and b[2] < a[2] + a[4]]
    assert not clashes, f"{name}: nodes overlap on the frontend's bounds: {clashes} (boxes x, y, w, h: {boxes})"
    page.set_viewport_size({"width": 2000, "height": 1200})  # the widest workflow at a readable zoom
    try:
        page.wait_for_timeout(500)  # the canvas takes the new size on its next frame; fit after that
        page.evaluate("async () => { await window.app.extensionManager.command.execute('Comfy.Canvas.FitView'); }")
        page.wait_for_timeout(700)
        screenshot(page, f"workflow-{name.removesuffix('.json')}.png")
    finally:
        page.set_viewport_size({"width": 1600, "height": 1000})


def test_trigger_word_chips_on_apply_krona(page):
    load_workflow(page, "1-krona-txt2img-lora.json")
    page.wait_for_selector(".krona-trigger-word", timeout=60_000)
    words = page.eval_on_selector_all(".krona-trigger-word", "els => els.map(e => e.textContent)")
    assert words == ["sks dog", "studio photo"]  # helpers/example_models.TRIGGER_WORDS
    assert "base: sd1" in page.inner_text(".krona-file-info")
    screenshot(page, "workflow-1-apply-krona.png")


def test_live_loss_chart_on_train_krona(page, server):
    load_workflow(page, "3-train-save-apply-krona.json", {
        "TrainKronA": {"steps": 12, "grad_accum": 1, "resolution": 64, "checkpoint_every": 0, "preview_every": 0,
                       "learning_rate": 0.01},
        "EmptyLatentImage": {"width": 64, "height": 64},
        "KSampler": {"steps": 3},
    })
    page.wait_for_selector("canvas.krona-loss-chart", timeout=30_000)
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")  # its return value varies by frontend version
    try:
        page.wait_for_function("() => Number(document.querySelector('canvas.krona-loss-chart').dataset.points) >= 12",
                               timeout=600_000)
    except Exception:
        screenshot(page, "failed-train-krona.png")
        raise AssertionError(f"no loss points drawn; ComfyUI log: {server.log_tail(3000)}") from None
    page.wait_for_timeout(1000)
    points = int(page.eval_on_selector("canvas.krona-loss-chart", "c => c.dataset.points"))
    drawn = page.eval_on_selector(
        "canvas.krona-loss-chart",
        """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let lit = 0; for (let i = 0; i < d.length; i += 4) if (d[i + 2] > 150 && d[i + 2] > d[i]) lit++;
                  return lit; }""",
    )
    assert points >= 12 and drawn > 50  # blue line pixels of the chart
    chart = page.query_selector("canvas.krona-loss-chart")
    chart.scroll_into_view_if_needed()
    shot = screenshot(page, "workflow-3-train-krona.png")
    assert shot.stat().st_size > 10_000
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    chart.screenshot(path=str(ARTIFACTS / "loss-chart.png"))
