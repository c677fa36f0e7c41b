// lockscope web view: draws the live wait-for graph and the findings.
// Every piece of data reaches the page through textContent or setAttribute, never
// innerHTML: lock names, actors and services are whatever the apps reported.
"use strict";

(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const POLL_MS = 1000;
  const MAX_NODES = 400;
  const KIND_PATHS = {
    deadlock: ["deadlocks", "deadlocks"],
    stale_holder: ["stale-holders", "stale_holders"],
    violation: ["violations", "violations"],
    order_inversion: ["order-inversions", "order_inversions"],
  };
  const KIND_TITLES = {
    deadlock: "Deadlock",
    stale_holder: "Stale holder",
    violation: "Mutual-exclusion violation",
    order_inversion: "Lock-order inversion",
  };

  // -- DOM helpers ---------------------------------------------------------------------
  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" }, cache: "no-store" });
    if (!response.ok) {
      const error = new Error("HTTP " + response.status);
      error.status = response.status;
      throw error;
    }
    return response.json();
  }

  function setStatus(text, isError) {
    const status = document.getElementById("status");
    if (!status) return;
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  function findingHref(kind, id) {
    return "/findings/" + encodeURIComponent(kind) + "/" + encodeURIComponent(id);
  }

  function short(text, max) {
    const s = String(text === undefined || text === null ? "" : text);
    return s.length > max ? s.slice(0, max - 1) + "\u2026" : s;
  }

  // -- which parts of the graph are on a cycle or stale ---------------------------------
  function classify(graph, staleHolders) {
    const deadlocked = new Set();
    const actorLabel = new Map();
    for (const n of graph.nodes) {
      if (n.type === "actor") {
        actorLabel.set(n.id, n.actor);
        if (n.deadlocked) deadlocked.add(n.id);
      }
    }
    const waitedByDead = new Set();
    const heldByDead = new Set();
    for (const e of graph.edges) {
      if (e.type === "waits" && deadlocked.has(e.source)) waitedByDead.add(e.target);
      if (e.type === "held_by" && deadlocked.has(e.target)) heldByDead.add(e.source);
    }
    const cycleLocks = new Set([...waitedByDead].filter((k) => heldByDead.has(k)));
    const stalePairs = new Set();
    const staleActors = new Set();
    for (const s of staleHolders) {
      stalePairs.add(s.lock_key + "\u0000" + s.actor);
      staleActors.add(s.actor);
    }
    function nodeClass(n) {
      const cls = ["node", n.type];
      if (n.type === "actor" && deadlocked.has(n.id)) cls.push("in-cycle");
      if (n.type === "lock" && cycleLocks.has(n.id)) cls.push("in-cycle");
      if (n.type === "actor" && staleActors.has(n.actor)) cls.push("stale");
      return cls.join(" ");
    }
    function edgeClass(e) {
      const cls = ["edge", e.type];
      if (e.type === "waits" && deadlocked.has(e.source) && cycleLocks.has(e.target)) cls.push("in-cycle");
      if (e.type === "held_by" && cycleLocks.has(e.source) && deadlocked.has(e.target)) cls.push("in-cycle");
      if (e.type === "held_by" && stalePairs.has(e.source + "\u0000" + actorLabel.get(e.target))) cls.push("stale");
      return cls.join(" ");
    }
    return { nodeClass, edgeClass };
  }

  // -- layout: a small deterministic force simulation, positions kept between polls ------
  const positions = new Map();

  function hash(text) {
    let h = 2166136261;
    for (let i = 0; i < text.length; i++) {
      h ^= text.charCodeAt(i);
      h = Math.imul(h, 16777619);
    }
    return (h >>> 0) / 4294967296;
  }

  // Each connected component is laid out on its own, then the components are packed in
  // rows (largest first), so unrelated waits do not drift apart or overlap.
  function simulate(ids, links) {
    const pts = ids.map((id) => {
      const p = positions.get(id);
      if (p) return { x: p.x, y: p.y, dx: 0, dy: 0 };
      const a = hash(id) * Math.PI * 2;
      const r = 60 + 60 * hash(id + "r");
      return { x: Math.cos(a) * r, y: Math.sin(a) * r, dx: 0, dy: 0 };
    });
    const fresh = ids.some((id) => !positions.has(id));
    const rounds = fresh ? 300 : 30;
    const k = 80;
    for (let round = 0; round < rounds; round++) {
      const t = 10 * (1 - round / rounds) + 0.5;
      for (const p of pts) { p.dx = 0; p.dy = 0; }
      for (let i = 0; i < pts.length; i++) {
        for (let j = i + 1; j < pts.length; j++) {
          let dx = pts[i].x - pts[j].x;
          let dy = pts[i].y - pts[j].y;
          let d2 = dx * dx + dy * dy;
          if (d2 < 0.01) { dx = 0.1 * (i - j); dy = 0.1; d2 = dx * dx + dy * dy; }
          const f = (k * k) / d2;
          pts[i].dx += dx * f; pts[i].dy += dy * f;
          pts[j].dx -= dx * f; pts[j].dy -= dy * f;
        }
      }
      for (const [a, b] of links) {
        const dx = pts[a].x - pts[b].x;
        const dy = pts[a].y - pts[b].y;
        const d = Math.sqrt(dx * dx + dy * dy) || 0.1;
        const f = d / k;
        pts[a].dx -= dx * f; pts[a].dy -= dy * f;
        pts[b].dx += dx * f; pts[b].dy += dy * f;
      }
      for (const p of pts) {
        p.dx -= p.x * 0.05; p.dy -= p.y * 0.05;
        const d = Math.sqrt(p.dx * p.dx + p.dy * p.dy) || 1;
        const step = Math.min(d, t);
        p.x += (p.dx / d) * step;
        p.y += (p.dy / d) * step;
      }
    }
    let cx = 0, cy = 0;
    for (const p of pts) { cx += p.x / pts.length; cy += p.y / pts.length; }
    ids.forEach((id, i) => {
      pts[i].x -= cx; pts[i].y -= cy;
      positions.set(id, { x: pts[i].x, y: pts[i].y });
    });
    return pts;
  }

  function layout(nodes, edges) {
    const live = new Set(nodes.map((n) => n.id));
    for (const id of [...positions.keys()]) if (!live.has(id)) positions.delete(id);
    const index = new Map(nodes.map((n, i) => [n.id, i]));
    const parent = nodes.map((_, i) => i);
    const find = (i) => (parent[i] === i ? i : (parent[i] = find(parent[i])));
    const pairs = [];
    for (const e of edges) {
      const a = index.get(e.source), b = index.get(e.target);
      if (a === undefined || b === undefined || a === b) continue;
      pairs.push([a, b]);
      parent[find(a)] = find(b);
    }
    const groups = new Map();
    nodes.forEach((_, i) => {
      const root = find(i);
      if (!groups.has(root)) groups.set(root, []);
      groups.get(root).push(i);
    });
    const comps = [...groups.values()].sort((a, b) => b.length - a.length);
    const out = new Array(nodes.length);
    const gap = 140, rowWidth = 1100;
    let x = 0, y = 0, rowHeight = 0;
    for (const members of comps) {
      const local = new Map(members.map((m, i) => [m, i]));
      const links = pairs.filter(([a]) => local.has(a)).map(([a, b]) => [local.get(a), local.get(b)]);
      const pts = simulate(members.map((m) => nodes[m].id), links);
      let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
      for (const p of pts) {
        minX = Math.min(minX, p.x); maxX = Math.max(maxX, p.x);
        minY = Math.min(minY, p.y); maxY = Math.max(maxY, p.y);
      }
      const w = maxX - minX, h = maxY - minY;
      if (x > 0 && x + w > rowWidth) { x = 0; y += rowHeight + gap; rowHeight = 0; }
      members.forEach((m, i) => { out[m] = { x: pts[i].x - minX + x, y: pts[i].y - minY + y }; });
      x += w + gap;
      rowHeight = Math.max(rowHeight, h);
    }
    return out;
  }

  // -- drawing -------------------------------------------------------------------------
  function nodeLabel(n) {
    return n.type === "lock" ? n.name : n.actor;
  }

  // The force layout spaces nodes, but a label is much wider than its node: push apart any
  // two nodes whose boxes (shape plus the label under it) overlap, along the axis that
  // needs the smaller move, until none do.
  const LABEL_CHARS = 40, CHAR_PX = 7.6, BOX_H = 58;
  function separate(nodes, pts) {
    const w = nodes.map((n) => Math.max(34, short(nodeLabel(n), LABEL_CHARS).length * CHAR_PX + 10));
    for (let round = 0; round < 400; round++) {
      let moved = false;
      for (let i = 0; i < pts.length; i++) {
        for (let j = i + 1; j < pts.length; j++) {
          const ox = (w[i] + w[j]) / 2 - Math.abs(pts[i].x - pts[j].x);
          const oy = BOX_H - Math.abs(pts[i].y - pts[j].y);
          if (ox <= 0 || oy <= 0) continue;
          moved = true;
          if (ox < oy) {
            const d = (pts[i].x <= pts[j].x ? -1 : 1) * (ox / 2 + 0.5);
            pts[i].x += d; pts[j].x -= d;
          } else {
            const d = (pts[i].y <= pts[j].y ? -1 : 1) * (oy / 2 + 0.5);
            pts[i].y += d; pts[j].y -= d;
          }
        }
      }
      if (!moved) break;
    }
  }

  // How many pairs of drawn labels overlap on screen (data-label-overlaps on the svg), so
  // a test or a curious user can check the drawing, not the layout's estimate of it.
  function countOverlaps(root) {
    const boxes = [...root.querySelectorAll(".nodes text")].map((t) => t.getBoundingClientRect());
    let n = 0;
    for (let i = 0; i < boxes.length; i++) {
      for (let j = i + 1; j < boxes.length; j++) {
        const a = boxes[i], b = boxes[j];
        if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) n++;
      }
    }
    return n;
  }

  function drawGraph(container, graph, staleHolders) {
    clear(container);
    let nodes = graph.nodes;
    if (nodes.length > MAX_NODES) nodes = nodes.slice(0, MAX_NODES);
    const ids = new Set(nodes.map((n) => n.id));
    const edges = graph.edges.filter((e) => e.type !== "waits_for" && ids.has(e.source) && ids.has(e.target));
    if (!nodes.length) return false;
    const { nodeClass, edgeClass } = classify(graph, staleHolders);
    const pts = layout(nodes, edges);
    separate(nodes, pts);
    const at = new Map(nodes.map((n, i) => [n.id, pts[i]]));
    let minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
    for (const p of pts) {
      minX = Math.min(minX, p.x); maxX = Math.max(maxX, p.x);
      minY = Math.min(minY, p.y); maxY = Math.max(maxY, p.y);
    }
    const pad = 90;
    const width = Math.max(maxX - minX + 2 * pad, 700);
    const height = Math.max(maxY - minY + 2 * pad, 420);
    const cx = (minX + maxX) / 2, cy = (minY + maxY) / 2;
    const root = svg("svg", {
      viewBox: `${cx - width / 2} ${cy - height / 2} ${width} ${height}`,
      role: "img",
      "aria-label": "wait-for graph",
    });
    const defs = svg("defs");
    for (const [id, cls] of [["arrow", ""], ["arrow-cycle", "cycle"]]) {
      const marker = svg("marker", { id, viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 11, markerHeight: 11, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" });
      marker.appendChild(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: cls }));
      defs.appendChild(marker);
    }
    root.appendChild(defs);
    const edgeLayer = svg("g", { class: "edges" });
    for (const e of edges) {
      const a = at.get(e.source), b = at.get(e.target);
      const dx = b.x - a.x, dy = b.y - a.y;
      const d = Math.sqrt(dx * dx + dy * dy) || 1;
      const r = 16;
      const cls = edgeClass(e);
      const line = svg("line", {
        x1: a.x + (dx / d) * r, y1: a.y + (dy / d) * r,
        x2: b.x - (dx / d) * (r + 2), y2: b.y - (dy / d) * (r + 2),
        class: cls,
        "marker-end": cls.includes("in-cycle") ? "url(#arrow-cycle)" : "url(#arrow)",
        "data-source": e.source, "data-target": e.target,
      });
      line.appendChild(svg("title", {}, `${e.type.replace("_", " ")} (${e.mode || "exclusive"})`));
      edgeLayer.appendChild(line);
    }
    root.appendChild(edgeLayer);
    const nodeLayer = svg("g", { class: "nodes" });
    for (const n of nodes) {
      const p = at.get(n.id);
      const g = svg("g", { class: nodeClass(n), transform: `translate(${p.x} ${p.y})`, "data-id": n.id });
      if (n.type === "lock") {
        g.appendChild(svg("rect", { x: -14, y: -14, width: 28, height: 28, rx: 4 }));
      } else {
        g.appendChild(svg("circle", { r: 15 }));
      }
      g.appendChild(svg("text", { x: 0, y: 32, "text-anchor": "middle" }, short(nodeLabel(n), LABEL_CHARS)));
      const detail = n.type === "lock"
        ? `lock ${n.name} (${n.system}), template ${n.template}`
        : `${n.actor} on ${n.host}${n.deadlocked ? " - deadlocked" : ""}`;
      g.appendChild(svg("title", {}, detail));
      nodeLayer.appendChild(g);
    }
    root.appendChild(nodeLayer);
    container.appendChild(root);
    root.dataset.labelOverlaps = String(countOverlaps(root));
    return true;
  }

  function describe(kind, f) {
    switch (kind) {
      case "deadlock":
        return `${(f.participants || []).length} actors over ${(f.locks || []).join(", ")}`;
      case "stale_holder":
        return `${f.lock} held by ${f.actor} (${f.reason})`;
      case "violation":
        return `${f.lock}: ${f.detail || f.reason}`;
      case "order_inversion":
        return (f.locks || []).concat((f.locks || []).slice(0, 1)).join(" \u2192 ");
      default:
        return f.id;
    }
  }

  async function activeFindings() {
    const lists = await Promise.all(
      Object.entries(KIND_PATHS).map(async ([kind, [path, key]]) => {
        const body = await getJSON(`/api/v1/${path}?status=active`);
        return (body[key] || []).map((f) => [kind, f]);
      }),
    );
    return lists.flat();
  }

  function drawFindings(list, findings) {
    clear(list);
    for (const [kind, f] of findings) {
      const li = el("li", { class: kind });
      li.appendChild(el("span", { class: "kind" }, KIND_TITLES[kind] || kind));
      const a = el("a", { href: findingHref(kind, f.id) }, describe(kind, f));
      li.appendChild(a);
      // When the agent *detected* the finding; lockscope status shows when each wait or hold
      // began ("waiting since"), which is earlier.
      li.appendChild(el("time", { datetime: f.detected_at, title: "when the agent detected this finding" }, "detected " + f.detected_at));
      list.appendChild(li);
    }
    return findings.length;
  }

  // -- pages ---------------------------------------------------------------------------
  async function graphPage() {
    const container = document.getElementById("graph");
    const list = document.getElementById("findings");
    async function refresh() {
      try {
        const [graph, stale, findings] = await Promise.all([
          getJSON("/api/v1/graph"),
          getJSON("/api/v1/stale-holders?status=active"),
          activeFindings(),
        ]);
        const drawn = drawGraph(container, graph, stale.stale_holders || []);
        document.getElementById("graph-empty").hidden = drawn;
        const count = drawFindings(list, findings);
        document.getElementById("findings-empty").hidden = count > 0;
        document.body.dataset.rendered = "true";
        setStatus(`live \u00b7 ${graph.nodes.length} nodes \u00b7 updated ${new Date().toLocaleTimeString()}`);
      } catch (err) {
        setStatus("agent unreachable: " + err.message, true);
      }
    }
    await refresh();
    setInterval(refresh, POLL_MS);
  }

  function fact(dl, name, value) {
    if (value === undefined || value === null || value === "") return;
    dl.appendChild(el("dt", {}, name));
    dl.appendChild(el("dd", {}, Array.isArray(value) ? value.join(", ") : value));
  }

  function participantsOf(kind, f) {
    if (kind === "deadlock") return f.participants || [];
    return [{ actor: f.actor, service: f.service, pid: f.pid, holds: f.lock ? [f.lock] : [], waits_for: null, waiting_since: f.since, code: f.code }];
  }

  function codeLocation(code) {
    if (!code || !code.file) return "";
    let where = String(code.file);
    if (code.line) where += ":" + code.line;
    if (code.function) where += " (" + code.function + ")";
    return where;
  }

  async function findingPage() {
    const parts = location.pathname.split("/").filter(Boolean);
    const kind = decodeURIComponent(parts[1] || "");
    const id = decodeURIComponent(parts[2] || "");
    const container = document.getElementById("graph");
    async function refresh() {
      let f;
      try {
        f = await getJSON("/api/v1/findings/" + encodeURIComponent(id));
      } catch (err) {
        setStatus(err.status === 404 ? "no such finding (it may have been forgotten)" : "agent unreachable: " + err.message, true);
        return;
      }
      document.title = `lockscope: ${KIND_TITLES[kind] || kind} ${id}`;
      document.getElementById("finding-title").textContent = `${KIND_TITLES[kind] || kind}: ${describe(kind, f)}`;
      const dl = document.getElementById("finding-facts");
      clear(dl);
      fact(dl, "id", f.id);
      fact(dl, "status", f.status);
      fact(dl, "detected", f.detected_at);
      fact(dl, "resolved", f.resolved_at);
      fact(dl, "resolution", f.resolution);
      fact(dl, "locks", f.locks);
      fact(dl, "lock", f.lock);
      fact(dl, "system", f.system || f.systems);
      fact(dl, "reason", f.reason);
      fact(dl, "detail", f.detail);
      fact(dl, "suggested victim", f.victim);
      const tbody = document.querySelector("#participants tbody");
      clear(tbody);
      for (const p of participantsOf(kind, f)) {
        const tr = el("tr");
        for (const v of [p.actor, p.service, p.pid, (p.holds || []).join(", "), p.waits_for, p.waiting_since, codeLocation(p.code)]) {
          tr.appendChild(el("td", {}, v === undefined || v === null ? "" : Array.isArray(v) ? v.join(", ") : v));
        }
        tbody.appendChild(tr);
      }
      document.getElementById("finding-json").textContent = JSON.stringify(f, null, 2);
      try {
        const [graph, stale] = await Promise.all([
          getJSON("/api/v1/graph"),
          getJSON("/api/v1/stale-holders?status=active"),
        ]);
        const actors = new Set(participantsOf(kind, f).map((p) => p.actor));
        const locks = new Set([].concat(f.locks || [], f.lock ? [f.lock] : []));
        const keep = new Set(graph.nodes
          .filter((n) => (n.type === "actor" ? actors.has(n.actor) : locks.has(n.name) || n.id === f.lock_key))
          .map((n) => n.id));
        const sub = { nodes: graph.nodes.filter((n) => keep.has(n.id)), edges: graph.edges.filter((e) => keep.has(e.source) && keep.has(e.target)) };
        if (!drawGraph(container, sub, stale.stale_holders || [])) {
          clear(container);
          container.appendChild(el("p", { class: "empty" }, "Not in the live graph (any more)."));
        }
        document.body.dataset.rendered = "true";
        setStatus(`${f.status} \u00b7 updated ${new Date().toLocaleTimeString()}`);
      } catch (err) {
        setStatus("agent unreachable: " + err.message, true);
      }
    }
    await refresh();
    setInterval(refresh, POLL_MS * 2);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const page = document.body.dataset.page;
    if (page === "graph") graphPage();
    else if (page === "finding") findingPage();
  });
})();
