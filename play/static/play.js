// The page of `slowfast-vgen play`: keys and typed actions go to the server over one WebSocket; chunks come
// back as frames, which are painted at the model's fps. Everything the page knows of the model (its keys, its
// presets, its fps) comes in the server's "hello".
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_NAMES = { ArrowUp: "up", ArrowDown: "down", ArrowLeft: "left", ArrowRight: "right", " ": "stay",
                    w: "up", s: "down", a: "left", d: "right", W: "up", S: "down", A: "left", D: "right" };
const KEY_LABELS = { up: "↑ W", down: "↓ S", left: "← A", right: "→ D", stay: "Space" };
const THUMBS_SHOWN = 400; // older thumbnails leave the page (the episode keeps them)

const state = {
  hello: null, fps: 8, keys: {}, held: null, queue: [], nextDue: 0, chunks: 0, playing: 0, oldestBranch: 1,
  paused: false, unsaved: false,
};
// What the benchmark and the browser test read: key press -> first frame of its chunk painted, and paints.
window.playStats = { latencies: [], paints: 0, painted: [], chunkSeconds: [], madeAhead: [], pressAt: null,
                     pressAction: null, pressFloor: 0 };

const stamp = () => new Date().toISOString().slice(0, 19).replace(/[-:]/g, "").replace("T", "-");
const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
const send = (message) => { if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message)); };

function say(text, kind = "info") {
  const box = $("message");
  box.textContent = text;
  box.className = `message ${kind}`;
}

function setStatus(text, kind = "") {
  $("status").textContent = text;
  $("status").className = `status ${kind}`;
}

function image(url) {
  const img = new Image();
  img.src = url;
  return img.decode().then(() => img);
}

function paint(canvas, img) {
  if (canvas.width !== img.width) { canvas.width = img.width; canvas.height = img.height; }
  canvas.getContext("2d").drawImage(img, 0, 0);
}

// ---------------------------------------------------------------- playback at the model's fps

function tick(now) {
  const next = state.queue[0];
  if (next && now >= state.nextDue) {
    state.queue.shift();
    paint($("screen"), next.img);
    if (next.lane) paint($("lane"), next.lane);
    window.playStats.paints += 1;
    window.playStats.painted.push(now);
    if (window.playStats.painted.length > 400) window.playStats.painted.shift();
    // A frame painted within a period of its due time keeps the clock (the screen's refresh, which paints a
    // few ms late every time, must not slow playback down); a later one, of a slow chunk, restarts it from
    // now, so playback never speeds up to catch up.
    const period = 1000 / state.fps;
    state.nextDue = (now - state.nextDue < period ? state.nextDue : now) + period;
    if (next.first) {
      state.playing = next.chunk;
      send({ type: "played", chunk: next.chunk });
      const stats = window.playStats;
      if (stats.pressAt !== null && next.chunk > stats.pressFloor && next.action === stats.pressAction) {
        stats.latencies.push(now - stats.pressAt);
        stats.pressAt = null;
      }
    }
  }
  if (!state.queue.length && now > state.nextDue) state.nextDue = now; // idle: the next frame paints at once
  requestAnimationFrame(tick);
}
requestAnimationFrame(tick);

// ---------------------------------------------------------------- memory panel and timeline

function showMemory(message) {
  const memory = message.memory;
  const rows = [["holds", memory.holds], ["updates", memory.updates], ["frames seen", memory.frames_seen],
                ["size", `${(memory.bytes / 2 ** 20).toFixed(2)} MiB`]];
  if (memory.views !== null) rows.splice(1, 0, ["views", memory.views]);
  $("memory-summary").replaceChildren(...rows.flatMap(([name, value]) => {
    const dt = document.createElement("dt"); dt.textContent = name;
    const dd = document.createElement("dd"); dd.textContent = value;
    return [dt, dd];
  }));
  $("panorama").hidden = !message.panorama;
  if (message.panorama) $("panorama").src = message.panorama;
  if (![...$("preset").options].some((option) => option.value === memory.preset)) {
    $("preset").append(new Option(memory.preset, memory.preset)); // a loaded memory's own settings
  }
  $("preset").value = memory.preset;
  state.chunks = message.chunks;
  state.oldestBranch = message.oldest_branch;
  $("split").checked = message.split;
  $("lane-view").hidden = !message.split;
  $("screen-caption").textContent = message.split ? `with memory (${memory.preset})` : `memory: ${memory.preset}`;
  for (const thumb of $("timeline").children) {
    const index = Number(thumb.dataset.index);
    thumb.classList.toggle("old", index > 0 && index < state.oldestBranch);
    thumb.classList.toggle("current", index === state.chunks);
  }
}

function addThumb(index, url, action) {
  const thumb = document.createElement("div");
  thumb.className = "thumb";
  thumb.dataset.index = index;
  thumb.title = index ? `chunk ${index}: ${action} (click to branch from here)` : "the start (click to start again)";
  const img = document.createElement("img");
  img.src = url;
  const label = document.createElement("span");
  label.textContent = index;
  thumb.append(img, label);
  thumb.addEventListener("click", () => {
    if (index > 0 && index < state.oldestBranch) {
      say(`Chunk ${index} is too old to branch from; export the episode to keep it.`, "error");
      return;
    }
    send({ type: "branch", chunk: index });
  });
  const timeline = $("timeline");
  timeline.append(thumb);
  while (timeline.children.length > THUMBS_SHOWN) timeline.firstElementChild.remove();
  timeline.scrollLeft = timeline.scrollWidth;
}

function truncateTimeline(index) {
  for (const thumb of [...$("timeline").children]) if (Number(thumb.dataset.index) > index) thumb.remove();
}

async function startOver(message, index) {
  state.queue = [];
  const img = await image(message.frames[0]);
  paint($("screen"), img);
  if (message.split) paint($("lane"), img);
  state.playing = index;
  showMemory(message);
}

// ---------------------------------------------------------------- messages of the server

const handlers = {
  async hello(message) {
    state.hello = message;
    state.fps = message.fps;
    state.keys = message.keys;
    $("model").textContent = `${message.model}${message.world ? ` · ${message.world}` : ""} · ${message.fps} fps`;
    $("output-dir").textContent = `(in ${message.output_dir})`;
    $("preset").replaceChildren(...message.presets.map((name) => new Option(name, name)));
    if (!message.presets.includes(message.preset)) $("preset").append(new Option(message.preset, message.preset));
    $("known-actions").replaceChildren(...message.actions.map((name) => new Option(name)));
    $("keys").replaceChildren(...Object.entries(message.keys).map(([key, action]) => {
      const span = document.createElement("span");
      span.className = "key";
      span.dataset.key = key;
      span.innerHTML = `<kbd></kbd>`;
      span.firstChild.textContent = KEY_LABELS[key];
      span.append(action);
      return span;
    }));
    $("save-path").value = `memory-${stamp()}.memory.safetensors`;
    $("export-path").value = `episode-${stamp()}.mp4`;
    await startOver(message, 0);
    addThumb(0, message.frames[0], "start");
    showMemory(message);
    setStatus("ready: hold an arrow key");
  },
  async chunk(message) {
    const frames = await Promise.all(message.frames.map(image));
    const lane = message.lane ? await Promise.all(message.lane.map(image)) : [];
    frames.forEach((img, i) => state.queue.push({ img, lane: lane[i], chunk: message.index, first: i === 0,
                                                  action: message.action }));
    addThumb(message.index, message.frames[message.frames.length - 1], message.action);
    window.playStats.chunkSeconds.push(message.seconds);
    window.playStats.madeAhead.push(Boolean(message.ahead));
    state.unsaved = true;
    showMemory(message);
    setStatus(state.paused ? "paused" : "ready", state.paused ? "paused" : "");
    $("stats").textContent = `chunk ${message.index} (${message.action}) made in ${message.seconds.toFixed(2)} s${message.ahead ? " (ahead)" : ""}`;
  },
  busy(message) { setStatus(`making: ${message.action}`, "busy"); },
  async branched(message) {
    truncateTimeline(message.index);
    await startOver(message, message.index);
    say(`Branched at chunk ${message.index}: the next action continues from there.`);
  },
  async episode(message) {
    $("timeline").replaceChildren();
    await startOver(message, 0);
    addThumb(0, message.frames[0], "start");
    showMemory(message);
    say(message.message);
  },
  info(message) {
    say(message.message);
    if (message.memory) showMemory(message);
    if (/^Exported/.test(message.message)) state.unsaved = false;
  },
  error(message) {
    say(message.message, "error");
    setStatus(state.paused ? "paused" : "ready", state.paused ? "paused" : "");
  },
};

// Messages are handled one after the other (a chunk's frames decode before the next message is looked at).
let handling = Promise.resolve();
ws.addEventListener("message", (event) => {
  const message = JSON.parse(event.data);
  handling = handling.then(() => handlers[message.type]?.(message)).catch((error) => say(String(error), "error"));
});
ws.addEventListener("close", () => setStatus("disconnected: restart `slowfast-vgen play` and reload", "paused"));

// ---------------------------------------------------------------- inputs

function typing(event) {
  return ["INPUT", "SELECT", "TEXTAREA"].includes(event.target.tagName);
}

function markKey(key, down) {
  document.querySelector(`.key[data-key="${key}"]`)?.classList.toggle("down", down);
}

window.addEventListener("keydown", (event) => {
  if (typing(event) || event.ctrlKey || event.metaKey || event.altKey) return;
  const key = KEY_NAMES[event.key];
  if (!key || !state.keys[key]) return;
  event.preventDefault();
  if (event.repeat || state.held === key) return;
  if (state.held) markKey(state.held, false);
  state.held = key;
  markKey(key, true);
  const stats = window.playStats;
  stats.pressAt = performance.now();
  stats.pressAction = state.keys[key];
  stats.pressFloor = state.chunks;
  send({ type: "hold", action: state.keys[key] });
});

window.addEventListener("keyup", (event) => {
  const key = KEY_NAMES[event.key];
  if (!key || key !== state.held) return;
  markKey(key, false);
  state.held = null;
  send({ type: "release" });
});

window.addEventListener("blur", () => { // a key released in another window would otherwise stay held
  if (state.held) { markKey(state.held, false); state.held = null; send({ type: "release" }); }
});

$("action-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("action").value;
  const limit = state.hello ? state.hello.max_action_chars : 200;
  if (!text.trim()) { say("The action is empty: type what the camera should do (e.g. 'move left').", "error"); return; }
  if (text.length > limit) {
    say(`The action is ${text.length.toLocaleString("en")} characters long; the model reads at most ${limit} ` +
        "(a short phrase such as 'move left').", "error");
    return;
  }
  window.playStats.pressAt = performance.now();
  window.playStats.pressAction = text.trim();
  window.playStats.pressFloor = state.chunks;
  send({ type: "action", action: text.trim() });
});

$("pause").addEventListener("click", () => {
  state.paused = !state.paused;
  $("pause").textContent = state.paused ? "Play" : "Pause";
  send({ type: state.paused ? "pause" : "resume" });
  setStatus(state.paused ? "paused" : "ready", state.paused ? "paused" : "");
});
$("step").addEventListener("click", () => send({ type: "step" }));
$("preset").addEventListener("change", (event) => send({ type: "preset", name: event.target.value }));
$("split").addEventListener("change", (event) => send({ type: "split", on: event.target.checked }));
for (const [form, kind, input] of [["save-form", "save", "save-path"], ["load-form", "load", "load-path"],
                                   ["export-form", "export", "export-path"]]) {
  $(form).addEventListener("submit", (event) => {
    event.preventDefault();
    send({ type: kind, path: $(input).value, force: $("force").checked });
  });
}
window.addEventListener("beforeunload", (event) => {
  if (state.unsaved && state.chunks > 0) event.preventDefault(); // the episode is lost with the tab
});
