// gensift review page: keyboard first, no build step. Every action is a POST that the
// server carries out through the router and journal; the page only shows the result.
"use strict";
(() => {
  const state = JSON.parse(document.getElementById("state").textContent);
  const tiles = Array.from(document.querySelectorAll(".tile"));
  const detail = document.getElementById("detail");
  const status = document.getElementById("status");
  const help = document.getElementById("help");
  const done = [];          // actions taken on this page, newest last: {label, index}
  const selected = new Set();
  let cursor = 0;
  let busy = false;

  const say = (text, bad = false) => {
    status.textContent = text;
    status.className = bad ? "bad" : "";
  };

  const post = async (path, body) => {
    const response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": state.csrf },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    const data = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  };

  const recount = async () => {
    try {
      const response = await fetch("/api/counts", { credentials: "same-origin" });
      const counts = await response.json();
      for (const [queue, n] of Object.entries(counts)) {
        const badge = document.querySelector(`#tab-${queue} .count`);
        if (badge) badge.textContent = n;
      }
    } catch (e) { /* the counts catch up on the next page */ }
  };

  const fmt = (p) => (p == null ? "–" : p.toFixed(3));

  const show = async (index) => {
    if (!tiles.length) return;
    cursor = Math.max(0, Math.min(tiles.length - 1, index));
    tiles.forEach((t, i) => t.classList.toggle("cursor", i === cursor));
    tiles[cursor].scrollIntoView({ block: "nearest" });
    const item = state.items[cursor];
    const rows = Object.entries(item.probabilities || {}).map(([stage, probs]) => {
      const cells = Object.entries(probs)
        .sort((a, b) => b[1] - a[1])
        .map(([k, v]) => `<li>${esc(k)} <b>${fmt(v)}</b></li>`).join("");
      return `<h3>${esc(stage)}</h3><ul class="probs">${cells}</ul>`;
    }).join("");
    const models = Object.entries(item.checkpoints || {})
      .map(([k, v]) => `<li>${esc(k)}: ${esc(v)}</li>`).join("");
    detail.innerHTML = `
      <img src="/image/${item.id}" alt="${esc(item.name)}">
      <h2>${esc(item.name)}</h2>
      <p class="decision">${esc(item.action)} (${esc(item.reason)}${item.class ? " " + esc(item.class) : ""})
        → <b>${esc(item.folder || "–")}/</b> by ${esc(item.actor)}, p = ${fmt(item.probability)}</p>
      ${rows}<h3>model</h3><ul>${models || "<li>–</li>"}</ul>
      <div id="params">reading generation parameters…</div>`;
    try {
      const response = await fetch(`/api/item/${item.id}`, { credentials: "same-origin" });
      const full = await response.json();
      const p = full.parameters;
      const box = document.getElementById("params");
      if (!box || state.items[cursor].id !== item.id) return;
      box.innerHTML = p == null ? "<p>no generation parameters in the file</p>" :
        `<h3>${p.kind === "comfyui" ? "ComfyUI" : "A1111 / Forge"}</h3>
         <p class="prompt">${esc(p.prompt)}</p>
         ${p.negative ? `<p class="negative">Negative: ${esc(p.negative)}</p>` : ""}
         <ul>${Object.entries(p.settings).map(([k, v]) => `<li>${esc(k)}: ${esc(v)}</li>`).join("")}</ul>`;
    } catch (e) { /* the details are a convenience; the grid still works */ }
  };

  const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

  const targets = () => (selected.size ? Array.from(selected).sort((a, b) => a - b) : [cursor]);

  const clearSelection = () => {
    selected.forEach((i) => tiles[i].classList.remove("selected"));
    selected.clear();
  };

  const act = async (verb, cls = null) => {
    if (busy || !tiles.length) return;
    busy = true;
    const indices = targets().filter((i) => !tiles[i].classList.contains("acted"));
    let ok = 0;
    for (const index of indices) {
      const item = state.items[index];
      try {
        const result = await post("/api/act", { id: item.id, verb, queue: state.queue, class: cls });
        done.push({ label: result.label.id, index, previous: tiles[index].dataset.done || "" });
        const where = result.folder ? `→ ${result.folder}/` : `${result.label.stage}: ${result.label.label}`;
        tiles[index].classList.add("acted");
        tiles[index].dataset.done = where;
        tiles[index].querySelector(".where").textContent = where;
        ok += 1;
      } catch (e) {
        say(`${item.name}: ${e.message}`, true);
        busy = false;
        return;
      }
    }
    clearSelection();
    recount();
    say(`${ok} done${indices.length > 1 ? " (" + indices.length + " selected)" : ""}`);
    busy = false;
    show(nextOpen(Math.max(...indices)));
  };

  const nextOpen = (from) => {
    for (let i = from + 1; i < tiles.length; i++) if (!tiles[i].classList.contains("acted")) return i;
    return Math.min(from + 1, tiles.length - 1);
  };

  const undo = async () => {
    if (busy) return;
    const last = done.pop();
    if (!last) { say("nothing to undo on this page"); return; }
    busy = true;
    try {
      await post("/api/undo", { label: last.label });
      const tile = tiles[last.index];
      tile.classList.remove("acted");
      tile.querySelector(".where").textContent = state.items[last.index].folder || "";
      say("undone: the file is back");
      recount();
      show(last.index);
    } catch (e) {
      done.push(last);
      say(`undo: ${e.message}`, true);
    }
    busy = false;
  };

  const move = (delta, extend) => {
    if (extend) {
      selected.add(cursor);
      tiles[cursor].classList.add("selected");
    }
    show(cursor + delta);
    if (extend) {
      selected.add(cursor);
      tiles[cursor].classList.add("selected");
    }
  };

  const perRow = () => {
    if (tiles.length < 2) return 1;
    const top = tiles[0].offsetTop;
    const n = tiles.findIndex((t) => t.offsetTop !== top);
    return n > 0 ? n : tiles.length;
  };

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key;
    if (!help.hidden && (key === "Escape" || key === "?")) { help.hidden = true; event.preventDefault(); return; }
    if (key === "?") { help.hidden = false; event.preventDefault(); return; }
    const lower = key.length === 1 ? key.toLowerCase() : key;
    const handled = {
      ArrowRight: () => move(1, event.shiftKey), ArrowLeft: () => move(-1, event.shiftKey),
      ArrowDown: () => move(perRow(), event.shiftKey), ArrowUp: () => move(-perRow(), event.shiftKey),
      j: () => move(1, event.shiftKey), k: () => move(-1, event.shiftKey),
      x: () => act("reject"), y: () => act("keep"), Enter: () => act("accept"),
      u: () => { say("left as is"); show(nextOpen(cursor)); }, z: () => undo(),
      " ": () => {
        tiles[cursor].classList.toggle("selected");
        if (selected.has(cursor)) selected.delete(cursor); else selected.add(cursor);
      },
      Escape: () => clearSelection(),
    }[lower];
    if (handled) { event.preventDefault(); handled(); return; }
    if (/^[1-9]$/.test(key)) {
      const cls = state.classes[Number(key) - 1];
      if (cls) { event.preventDefault(); act("class", cls); }
    }
  });

  tiles.forEach((tile, i) => tile.addEventListener("click", (event) => {
    if (event.shiftKey) { tile.classList.toggle("selected"); selected.has(i) ? selected.delete(i) : selected.add(i); }
    show(i);
  }));

  // Retrain: the same `gensift retrain feature`, in the page's server; its output polled
  const progress = document.getElementById("progress");
  const progressLines = document.getElementById("progress-lines");
  const progressResult = document.getElementById("progress-result");
  const poll = async () => {
    const response = await fetch("/api/retrain", { credentials: "same-origin" });
    const job = await response.json();
    progressLines.textContent = job.lines.join("\n");
    progressLines.scrollTop = progressLines.scrollHeight;
    if (job.running) { setTimeout(poll, 1000); return; }
    progressResult.textContent = job.error ? job.error :
      job.result.published ? `published: ${job.result.before} → ${job.result.after} on your held-out labels` :
      "the gate refused the new model; the live one stays";
    progressResult.className = job.error || !job.result.published ? "bad" : "ok";
    recount();
  };
  document.getElementById("retrain").addEventListener("click", async (event) => {
    event.currentTarget.blur();  // Enter belongs to the grid, not to this button
    progress.hidden = false;
    progressLines.textContent = "starting…";
    progressResult.textContent = "";
    try {
      await post("/api/retrain", { stage: "feature" });
    } catch (e) {
      if (!/already running/.test(e.message)) { progressResult.textContent = e.message; return; }
    }
    poll();
  });
  document.getElementById("progress-close").addEventListener("click", () => { progress.hidden = true; });

  window.gensift = { ready: true };
  show(0);
})();
