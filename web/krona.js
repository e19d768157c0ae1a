// ComfyUI-KronA frontend extension.
//  - Train KronA: a live loss chart drawn from the "krona.train" progress messages.
//  - Load KronA / Apply KronA: the file's base model and trigger words (click a word to copy it).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const TRAIN = "TrainKronA";
const FILE_NODES = new Set(["LoadKronA", "ApplyKronA"]);

function makeChart(node) {
  const canvas = document.createElement("canvas");
  canvas.className = "krona-loss-chart";
  canvas.width = 320;
  canvas.height = 150;
  canvas.style.width = "100%";
  canvas.style.height = "150px";
  canvas.style.background = "#1b1b1b";
  canvas.style.borderRadius = "4px";
  canvas.dataset.points = "0";
  const state = { canvas, losses: [], total: 0, status: "waiting for training" };
  // kept on the node: its id is only final after the graph has been configured
  node.kronaChart = state;
  node.addDOMWidget("krona_loss_chart", "krona-chart", canvas, {
    serialize: false,
    hideOnZoom: false,
    getMinHeight: () => 160,
    getHeight: () => 160,
  });
  draw(state);
  return state;
}

function ema(values, alpha = 0.1) {
  const out = [];
  let level = null;
  for (const v of values) {
    level = level === null ? v : alpha * v + (1 - alpha) * level;
    out.push(level);
  }
  return out;
}

function draw(state) {
  const { canvas, losses } = state;
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, left = 40, right = 8, top = 18, bottom = 18;
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = "#bbb";
  ctx.font = "11px sans-serif";
  const last = losses.length ? losses[losses.length - 1].toFixed(4) : "–";
  ctx.fillText(`loss ${last}   step ${losses.length}${state.total ? " / " + state.total : ""}   ${state.status}`, left, 12);
  canvas.dataset.points = String(losses.length);
  if (losses.length < 1) return;
  let lo = Math.min(...losses), hi = Math.max(...losses);
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  const n = Math.max(state.total || losses.length, 2);
  const x = (i) => left + (w - left - right) * (i / (n - 1));
  const y = (v) => top + (h - top - bottom) * (1 - (v - lo) / (hi - lo));
  ctx.strokeStyle = "#444";
  ctx.strokeRect(left, top, w - left - right, h - top - bottom);
  ctx.fillText(hi.toPrecision(3), 2, top + 8);
  ctx.fillText(lo.toPrecision(3), 2, h - bottom);
  const line = (values, color, width) => {
    ctx.strokeStyle = color;
    ctx.lineWidth = width;
    ctx.beginPath();
    values.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
    ctx.stroke();
  };
  line(losses, "#5b7fb8", 1);
  line(ema(losses), "#9fd0ff", 2);
}

function makeFileInfo(node) {
  const box = document.createElement("div");
  box.className = "krona-file-info";
  box.style.cssText = "font: 11px sans-serif; color: #ccc; padding: 2px 4px; overflow: auto; max-height: 90px";
  node.addDOMWidget("krona_file_info", "krona-info", box, { serialize: false });
  const widget = node.widgets?.find((w) => w.name === "krona_name");
  const refresh = async () => {
    if (!widget?.value) return;
    try {
      const response = await api.fetchApi(`/krona/info?name=${encodeURIComponent(widget.value)}`);
      const info = await response.json();
      render(box, info);
    } catch (error) {
      box.textContent = `KronA: ${error}`;
    }
  };
  if (widget) {
    const callback = widget.callback;
    widget.callback = function (...args) {
      const result = callback?.apply(this, args);
      refresh();
      return result;
    };
  }
  setTimeout(refresh, 0);
}

function render(box, info) {
  box.replaceChildren();
  if (info.error) {
    box.textContent = info.error;
    return;
  }
  const head = document.createElement("div");
  head.textContent = `base: ${info.base_model || "unknown"} · ${info.modules} modules · trigger words:`;
  box.appendChild(head);
  for (const word of info.trigger_words || []) {
    const chip = document.createElement("span");
    chip.className = "krona-trigger-word";
    chip.textContent = word;
    chip.title = "click to copy";
    chip.style.cssText = "display:inline-block; margin:2px; padding:1px 6px; border-radius:8px; background:#345; cursor:pointer";
    chip.onclick = () => navigator.clipboard?.writeText(word).then(() => { chip.style.background = "#364"; });
    box.appendChild(chip);
  }
}

app.registerExtension({
  name: "ComfyUI-KronA",
  setup() {
    api.addEventListener("krona.train", ({ detail }) => {
      const node = app.graph?.getNodeById(Number(detail.node)) ?? app.graph?.getNodeById(detail.node);
      const state = node?.kronaChart;
      if (!state) return;
      if (detail.event === "done") {
        state.losses = detail.losses;
        state.status = "done";
      } else if (detail.event === "cancelled") {
        state.status = `cancelled at step ${detail.step}`;
      } else if (detail.event === "progress") {
        state.status = `${detail.phase} ${detail.done}/${detail.total}`;
      } else {
        if (detail.step === 1) state.losses = [];
        state.losses.push(detail.loss);
        state.total = detail.total;
        state.status = "training";
      }
      draw(state);
    });
  },
  nodeCreated(node) {
    const type = node.comfyClass || node.type;
    if (type === TRAIN) makeChart(node);
    if (FILE_NODES.has(type)) makeFileInfo(node);
  },
});
