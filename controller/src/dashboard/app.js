// Sluice's dashboard: polls /ui/api/state once a second and draws each Route as a small
// topology (route -> revisions -> replicas), coloured by the router's golden signals, with
// its SLO-gated rollout and recent events. No framework, no build step.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const node = tag.startsWith("svg:")
    ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return node;
}

function health(signals) {
  if (!signals || !signals.requests) return "idle";
  const s = signals.successRate;
  if (s >= 0.99) return "ok";
  if (s >= 0.95) return "warn";
  return "bad";
}

const COLOURS = { ok: "#2e9e5b", warn: "#d99a1c", bad: "#d64545", idle: "#9aa3ad" };

function pct(f) {
  return f === null || f === undefined ? "–" : (f * 100).toFixed(1) + "%";
}

function ms(v) {
  return v === null || v === undefined ? "–" : v < 10 ? v.toFixed(1) + " ms" : Math.round(v) + " ms";
}

function signalLine(s) {
  if (!s || !s.requests) return "no requests";
  return `${s.rps.toFixed(1)} req/s · ${pct(s.successRate)} ok · p50 ${ms(s.p50Ms)} · p99 ${ms(s.p99Ms)}`;
}

// route -> revision -> replica, one row per revision.
function topology(route) {
  const revs = route.revisions;
  const rowH = 58;
  const height = Math.max(1, revs.length) * rowH + 10;
  const svg = el("svg:svg", { class: "topology", viewBox: `0 0 980 ${height}`, height });
  const mid = height / 2;
  const routeHealth = revs.some((r) => health(r.signals) === "bad") ? "bad"
    : revs.some((r) => health(r.signals) === "warn") ? "warn"
    : revs.some((r) => health(r.signals) === "ok") ? "ok" : "idle";
  svg.append(
    el("svg:rect", { x: 4, y: mid - 20, width: 170, height: 40, rx: 6, fill: "#fff", stroke: COLOURS[routeHealth], "stroke-width": 2 }),
    el("svg:text", { x: 14, y: mid - 3 }, route.name),
    el("svg:text", { x: 14, y: mid + 13, class: "small" }, "route"),
  );
  revs.forEach((rev, i) => {
    const y = i * rowH + 5 + rowH / 2;
    const share = rev.traffic.reduce((a, t) => a + (t.percent || 0), 0);
    const tags = rev.traffic.map((t) => t.tag).filter(Boolean).map((t) => "#" + t).join(" ");
    const colour = COLOURS[health(rev.signals)];
    const width = share > 0 ? 1.5 + share / 12 : 1;
    svg.append(el("svg:path", {
      d: `M174 ${mid} C 260 ${mid}, 260 ${y}, 340 ${y}`,
      fill: "none", stroke: colour, "stroke-width": width,
      "stroke-dasharray": share > 0 ? null : "4 4",
    }));
    svg.append(el("svg:text", { x: 290, y: y - 8 }, `${share}%${tags ? " " + tags : ""}`));
    const via = rev.activatorInPath ? " · via activator" : "";
    svg.append(
      el("svg:rect", { x: 340, y: y - 24, width: 420, height: 48, rx: 6, fill: "#fff", stroke: colour, "stroke-width": 2 }),
      el("svg:text", { x: 350, y: y - 6 }, `${rev.name}${rev.ready ? "" : " (not ready)"}${via}`),
      el("svg:text", { x: 350, y: y + 12, class: "small" }, signalLine(rev.signals)),
    );
    const scale = `${rev.actual}/${rev.desired ?? "?"} replicas${rev.panic ? " · PANIC" : ""}`;
    svg.append(el("svg:text", { x: 770, y: y - 10, class: "small" }, scale));
    rev.replicas.slice(0, 12).forEach((addr, k) => {
      const cx = 778 + k * 16;
      svg.append(el("svg:line", { x1: 760, y1: y, x2: cx, y2: y + 10, stroke: "#c5ced8" }));
      const dot = el("svg:circle", { cx, cy: y + 10, r: 6, fill: colour });
      dot.append(el("svg:title", {}, addr));
      svg.append(dot);
    });
  });
  return svg;
}

// The gates as the controller read them from the annotations (defaults filled in).
function gates(g, inference) {
  if (!g) return "";
  const p = (f) => +(f * 100).toFixed(2);
  const parts = [
    `success ≥ ${p(g.minSuccessRate)}%`,
    `≥ baseline − ${p(g.maxSuccessRateDrop)} pt`,
  ];
  if (g.maxP99Ms !== null && g.maxP99Ms !== undefined) parts.push(`p99 ≤ ${ms(g.maxP99Ms)}`);
  parts.push(`p99 ≤ baseline + ${p(g.maxP99Increase)}%`);
  if (inference) parts.push(`model errors ≤ ${p(g.maxModelErrorRate)}%`);
  parts.push(`${g.minRequests} requests a step, every ${g.intervalSeconds} s`);
  if (g.maxSurge) parts.push(`canary ≤ ${g.maxSurge} replicas`);
  return parts.join(" · ");
}

function rollout(route) {
  const r = route.rollout;
  if (!r || !r.canary) return null;
  const box = el("div", { class: `rollout ${r.phase}` },
    el("div", {}, el("b", {}, `Rollout ${r.baseline} → ${r.canary}`), ` · ${r.phase}`));
  const steps = el("div", { class: "steps" });
  (r.steps || []).forEach((s, i) => {
    const verdict = (r.verdicts || [])[i];
    let cls = "step";
    if (verdict) cls += verdict.passed ? " done" : " failed";
    else if (i === r.step && r.phase === "Progressing") cls += " current";
    else if (r.phase === "Promoted") cls += " done";
    steps.append(el("span", { class: cls }, `${s}%`));
  });
  box.append(steps);
  const inference = route.owner && route.owner.kind === "InferenceService";
  box.append(el("div", { class: "gates" }, "gates: " + gates(route.gates, inference)));
  if ((r.verdicts || []).length) {
    const table = el("table", {}, el("tr", {},
      el("th", {}, "step"), el("th", {}, "canary"), el("th", {}, "baseline"), el("th", {}, "verdict")));
    const m = (x) => x ? `${x.requests} req · ${pct(x.requests ? 1 - x.errors / x.requests : null)} ok · p99 ${ms(x.p99Us === undefined ? null : x.p99Us / 1000)}` : "–";
    for (const v of r.verdicts) {
      table.append(el("tr", {}, el("td", {}, `${v.percent}%`), el("td", {}, m(v.canary)),
        el("td", {}, m(v.baseline)), el("td", {}, v.passed ? "passed" : "FAILED: " + (v.failed || []).join("; "))));
    }
    box.append(table);
  }
  box.append(el("div", { class: "message" }, r.message || ""));
  return box;
}

function card(route) {
  const ready = (route.conditions || []).find((c) => c.type === "Ready");
  const dot = ready && ready.status === "True" ? "ok" : ready && ready.status === "False" ? "bad" : "idle";
  const owner = route.owner || { kind: "Route", name: route.name };
  const title = el("h2", {}, el("span", { class: `dot ${dot}` }), el("span", { class: `kind ${owner.kind}` }, owner.kind),
    owner.name === route.name ? route.name : `${owner.name} (${route.name})`);
  const events = el("ul", { class: "events" });
  for (const e of route.events || []) {
    events.append(el("li", { class: e.type }, `${e.time || ""} ${e.reason}: ${e.message}`));
  }
  return el("section", { class: "card", "data-route": route.name }, title,
    el("div", { class: "url" }, route.url || ""), rollout(route), topology(route), events);
}

async function refresh() {
  const main = document.getElementById("routes");
  try {
    const resp = await fetch("/ui/api/state", { credentials: "same-origin", cache: "no-store" });
    if (resp.status === 401) {
      main.replaceChildren(el("div", { class: "signin" },
        "Not signed in: run `sluice ui` and open the link it prints (it signs this browser in with the admin token)."));
      return;
    }
    const state = await resp.json();
    const routes = state.routes || [];
    main.replaceChildren(...(routes.length ? routes.map(card) : [el("div", { class: "empty" }, "Nothing deployed yet: sluice apply -f samples/")]));
    const rps = routes.flatMap((r) => r.revisions).reduce((a, r) => a + (r.signals ? r.signals.rps : 0), 0);
    document.getElementById("summary").textContent = `${routes.length} routes · ${rps.toFixed(1)} req/s`;
    document.getElementById("window").textContent = Math.round(state.windowSeconds || 10);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.loaded = "true";
  } catch (e) {
    document.getElementById("updated").textContent = "cannot reach sluice: " + e;
  }
}

refresh();
setInterval(refresh, 1000);
