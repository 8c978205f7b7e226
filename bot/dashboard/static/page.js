"use strict";
// The dashboard page: draws the daemon's snapshot and keeps it live over server-sent events.
// Read-only; nothing here sends anything but the event-stream request to the daemon itself.
// Text from the daemon is only ever set as text (never parsed as HTML).
(() => {
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const token = new URLSearchParams(location.search).get("token") || "";
  const STALE_AFTER = 3; // heartbeats without a word
  let tz = "America/New_York";
  let snap = null;
  let serverOffsetMs = 0; // the daemon's clock minus this browser's
  let heartbeatMs = 5000;
  let lastHeard = Date.now();
  let state = "connecting";
  let downSince = 0;
  let source = null;
  let retryTimer = 0;
  let retryMs = 1000;
  let snapshots = 0;
  let rendered = false;

  // -- DOM helpers ----------------------------------------------------------------------------
  function put(el, kids) {
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : String(kid));
    }
    return el;
  }
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else el.setAttribute(k, String(v));
    }
    return put(el, kids);
  }
  function s(tag, attrs, ...kids) {
    const el = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) el.setAttribute(k, String(v));
    }
    return put(el, kids);
  }
  function fill(id, ...kids) {
    const el = $(id);
    el.replaceChildren();
    put(el, kids);
  }

  // -- numbers and times ----------------------------------------------------------------------
  const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
  const usdFmt = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
  function usd(v, signed = true) {
    const n = num(v);
    if (n === null) return "–";
    const text = usdFmt.format(Math.abs(n));
    if (!signed) return (n < 0 ? "−" : "") + text;
    return (n > 0 ? "+" : n < 0 ? "−" : "") + text;
  }
  const pts = (v) => (num(v) === null ? "–" : num(v).toFixed(2));
  const pct = (v) => (num(v) === null ? "" : (v > 0 ? "+" : v < 0 ? "−" : "") + Math.abs(v).toFixed(1) + "%");
  const sign = (v) => (num(v) === null || v === 0 ? "" : v > 0 ? "pos" : "neg");
  const count = (v) => (num(v) === null ? "–" : String(Math.round(v * 100) / 100));
  const formats = new Map();
  function fmt(zone, opts) {
    const key = zone + JSON.stringify(opts);
    if (!formats.has(key)) {
      formats.set(key, new Intl.DateTimeFormat("en-GB", { timeZone: zone, hourCycle: "h23", ...opts }));
    }
    return formats.get(key);
  }
  const TIME = { hour: "2-digit", minute: "2-digit", second: "2-digit" };
  const HM = { hour: "2-digit", minute: "2-digit" };
  const DAY = { weekday: "short", day: "numeric", month: "short" };
  const localZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  function parse(iso) {
    if (typeof iso !== "string") return null;
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? null : d;
  }
  // Exchange time, with local time beside it when the browser's zone shows another time.
  function when(iso, { date = false, seconds = true } = {}) {
    const d = parse(iso);
    if (!d) return h("span", { class: "muted" }, "–");
    const clock = seconds ? TIME : HM;
    const et = fmt(tz, { ...clock, ...(date ? DAY : {}) }).format(d);
    const localTime = fmt(localZone, clock).format(d);
    // The local date only when it is another day than the exchange's.
    const otherDay = fmt(localZone, DAY).format(d) !== fmt(tz, DAY).format(d);
    const local = date && otherDay ? fmt(localZone, { ...clock, ...DAY }).format(d) : localTime;
    const out = h("span", { class: "when-both" }, h("span", { class: "mono" }, et + " ET"));
    if (localTime !== fmt(tz, clock).format(d) || otherDay) {
      put(out, [" ", h("span", { class: "muted mono" }, "(" + local + " local)")]);
    }
    return out;
  }
  function dayName(isoDay) {
    const d = parse(isoDay + "T12:00:00Z");
    return d ? fmt("UTC", { ...DAY }).format(d) : isoDay;
  }
  function ago(ms) {
    const sec = Math.max(0, Math.round(ms / 1000));
    if (sec < 90) return sec + " s";
    const min = Math.round(sec / 60);
    if (min < 90) return min + " min";
    const hours = Math.floor(min / 60);
    return hours + " h " + (min % 60) + " min";
  }
  const serverNow = () => Date.now() + serverOffsetMs;

  // -- sections -------------------------------------------------------------------------------
  function renderHeader(st) {
    const mode = $("mode");
    mode.textContent = st.mode || "–";
    mode.className = "badge" + (st.mode === "live" ? " live" : "");
    const health = $("health");
    const halted = st.paused && st.healthy === false;
    if (st.paused && !halted) {
      health.textContent = "paused";
      health.className = "badge warn";
    } else if (st.healthy === true) {
      health.textContent = "healthy";
      health.className = "badge ok";
    } else {
      health.textContent = halted ? "halted" : "degraded";
      health.className = "badge bad";
    }
  }

  function nextEntryText(st) {
    const iso = st.next_entry && st.next_entry.exchange;
    const d = parse(iso);
    if (!d) return h("span", { class: "muted" }, st.paused ? "none while paused" : "none planned");
    const inMs = d.getTime() - serverNow();
    return [when(iso, { date: true, seconds: false }), inMs > 0 ? h("span", { class: "muted" }, " · in " + ago(inMs)) : null];
  }

  function renderHealth(data) {
    const st = data.status || {};
    const alerts = st.alerts || {};
    const link = [h("span", { class: st.link === "up" ? "pos" : "neg" }, st.link || "–")];
    if (st.link_error) link.push(h("span", { class: "muted" }, " · " + st.link_error));
    const rec = st.reconciliation === "done" ? h("span", { class: "pos" }, "done") : h("span", { class: "neg" }, st.reconciliation || "–");
    const alertText = [
      "SMS " + (alerts.sms || "–"),
      count(alerts.pending) + " pending",
      count(alerts.failed) + " failed",
    ].join(" · ");
    const rows = [
      ["mode", st.mode || "–"],
      ["IB link", link],
      ["reconciliation", rec],
      ["entries", st.paused ? h("span", { class: "neg" }, "paused") : "allowed"],
      ["next entry", nextEntryText(st)],
      ["last error", st.last_error ? h("span", { class: "neg" }, st.last_error) : h("span", { class: "muted" }, "none")],
      ["alert backlog", [h("span", { class: (num(alerts.pending) || 0) + (num(alerts.failed) || 0) > 0 ? "neg" : "" }, alertText),
        alerts.last_error ? h("div", { class: "muted" }, "last SMS error: " + alerts.last_error) : null]],
    ];
    fill("health-list", rows.map(([k, v]) => [h("dt", {}, k), h("dd", { "data-fact": k }, v)]));
  }

  const FAILED = ["cancelled", "rejected", "failed", "never_sent", "skipped"];
  // What filled: the executions journaled, or the broker's word when it is ahead of them (IB may
  // report "Filled" before the executions arrive).
  const filledOf = (t) => Math.max(num(t.filled) || 0, num(t.broker_filled) || 0);
  function progressText(t) {
    const filled = filledOf(t);
    const price = num(t.avg_price) !== null ? t.avg_price : t.last_limit;
    const pending = filled > (num(t.filled) || 0) ? " (executions pending)" : "";
    if (filled > 0 && num(price) !== null) return "filled " + count(filled) + "/" + count(t.quantity) + " at " + pts(price) + pending;
    if (num(t.last_limit) !== null) return t.status + " at " + pts(t.last_limit);
    return t.status;
  }
  function steps(t) {
    const filled = filledOf(t);
    const final = !["claimed", "working"].includes(t.status);
    const out = [h("li", { class: "done" }, "claimed")];
    out.push(h("li", { class: t.legs ? "done" : final ? "" : "now" }, t.legs ? "legs chosen" : "choosing legs"));
    if (num(t.last_limit) !== null) {
      out.push(h("li", { class: t.status === "working" && filled === 0 ? "now" : "done" }, "working at " + pts(t.last_limit)));
    } else {
      out.push(h("li", {}, "working"));
    }
    if (filled > 0 || t.status === "filled" || t.status === "partial") {
      out.push(h("li", { class: t.status === "working" ? "now" : "good" }, "filled " + count(filled) + "/" + count(t.quantity)));
    } else if (FAILED.includes(t.status)) {
      out.push(h("li", { class: "fail" }, t.status.replace("_", " ")));
    } else if (t.status === "unknown") {
      out.push(h("li", { class: "fail" }, "outcome unknown: bot resolve"));
    } else {
      out.push(h("li", {}, "filled 0/" + count(t.quantity)));
    }
    return h("ol", { class: "steps" }, out);
  }

  function renderToday(data) {
    const today = (data.today || []).slice().reverse();
    if (!today.length) {
      fill("today", h("p", { class: "empty" }, "No entry today yet. Next: "), h("div", {}, nextEntryText(data.status || {})));
      return;
    }
    fill("today", today.map((t) => h("div", { class: "entry", "data-entry-id": t.id, "data-status": t.status },
      h("div", { class: "entry-head" },
        h("strong", {}, "#" + t.id),
        h("span", { class: "chip" }, t.source || "–"),
        h("span", { class: "entry-progress" }, progressText(t)),
        h("span", { class: "muted" }, "started "), when(t.started_at)),
      steps(t),
      t.legs ? h("div", { class: "muted" }, t.legs) : null,
      t.ended_at ? h("div", { class: "muted" }, "ended ", when(t.ended_at)) : null)));
  }

  function ruleText(u) {
    const name = u.rule.replace(/_/g, " ");
    if (u.at) return [name + " ", when(u.at, { date: true, seconds: false })];
    const op = u.rule === "stop_loss" ? "≤" : "≥";
    return name + " at mark " + op + " " + pts(u.trigger_mark);
  }
  function td(label, attrs, ...kids) {
    return h("td", { "data-label": label, ...attrs }, ...kids);
  }

  function renderPositions(data) {
    const rows = data.open_positions || [];
    $("positions-count").textContent = rows.length ? "(" + rows.length + ")" : "";
    $("positions-empty").hidden = rows.length > 0;
    $("positions").hidden = rows.length === 0;
    fill("positions-body", rows.map((p) => {
      const u = p.pnl && num(p.pnl.usd) !== null ? p.pnl : null;
      const mark = p.mark;
      const rules = p.exit_rules || {};
      const ruleItems = [];
      if (rules.fires) ruleItems.push(h("li", { class: "due" }, rules.fires.replace(/_/g, " ") + ": due now"));
      for (const r of rules.upcoming || []) ruleItems.push(h("li", {}, ruleText(r)));
      let state = p.state;
      if (p.frozen) state = "FROZEN: " + p.frozen;
      else if (p.live_exit) state = "exit #" + p.live_exit + " working";
      return h("tr", { "data-position-id": p.id },
        td("#", {}, "#" + p.id),
        td("legs", {}, p.legs_text || p.entry_key),
        td("qty", { class: "num" }, count(p.quantity)),
        td("debit", { class: "num" }, pts(p.debit), h("div", { class: "muted" }, usd(p.paid_usd, false))),
        td("mark", { class: "num" }, mark ? h("span", { class: mark.usable ? "" : "muted", title: mark.text }, pts(mark.value)) : h("span", { class: "muted" }, "–"),
          mark && mark.as_of ? h("div", { class: "muted" }, when(mark.as_of, { seconds: false })) : null),
        td("P&L", { class: "num " + (u ? sign(u.usd) : "") }, u ? [usd(u.usd), h("div", {}, pct(u.pct))] : h("span", { class: "muted" }, mark ? "–" : "no mark yet")),
        td("exit rules", {}, h("ul", { class: "rules" }, ruleItems)),
        td("state", {}, h("span", { class: p.frozen ? "neg" : "" }, state)));
    }));
  }

  function renderWorking(data) {
    const rows = data.working || [];
    $("working-empty").hidden = rows.length > 0;
    $("working").hidden = rows.length === 0;
    fill("working-body", rows.map((t) => h("tr", { "data-order-id": t.id, "data-kind": t.kind },
      td("#", {}, "#" + t.id),
      td("kind", {}, t.kind === "exit" ? "exit of #" + t.position_id : "entry"),
      td("status", {}, t.status),
      td("limit", { class: "num" }, pts(t.last_limit)),
      td("filled", { class: "num" }, count(filledOf(t)) + "/" + count(t.quantity)),
      td("since", {}, when(t.started_at)),
      td("key", { class: "muted" }, t.idempotency_key))));
  }

  function renderHistory(data) {
    const days = data.days || [];
    $("history-span").textContent = "(last " + (data.history_days || "") + " days)";
    $("history-empty").hidden = days.length > 0;
    $("history").hidden = days.length === 0;
    fill("history-body", days.map((d) => {
      const entries = (d.entries || []).map((t) => h("div", {}, "#" + t.id + " " + progressText(t) + (t.source ? " (" + t.source + ")" : "")));
      const blocked = Object.entries(d.blocked || {}).map(([k, n]) => h("div", { class: "muted" }, n + " " + k.toLowerCase().replace(/_/g, " ")));
      return h("tr", { "data-day": d.day },
        td("day", {}, dayName(d.day)),
        td("entries", {}, entries.length ? entries : h("span", { class: "muted" }, "–")),
        td("blocked", {}, blocked.length ? blocked : h("span", { class: "muted" }, "–")),
        td("realised", { class: "num " + sign(d.realized) }, d.realized === null || d.realized === undefined ? h("span", { class: "muted" }, "–") : usd(d.realized)));
    }));
  }

  function renderAlerts(data) {
    const alerts = data.alerts || [];
    $("alerts-empty").hidden = alerts.length > 0;
    fill("alerts", alerts.map((a) => h("li", { "data-alert-id": a.id },
      h("span", { class: "when" }, when(a.created_at, { date: true, seconds: false })),
      h("span", { class: "chip" }, a.state),
      h("span", { class: "grow" }, a.body))));
  }

  function renderSchedule(data) {
    const sch = data.schedule || { days: [] };
    const items = [];
    if (!sch.enabled) items.push(h("li", { class: "muted" }, "The daily schedule is off: entries only through bot trade."));
    for (const p of sch.days || []) {
      items.push(h("li", { "data-day": p.day },
        h("span", { class: "when" }, dayName(p.day)),
        p.entry_at ? when(p.entry_at, { seconds: false }) : h("span", { class: "muted grow" }, "skipped: " + (p.skipped || "no entry"))));
    }
    fill("schedule", items);
  }

  // -- charts (inline SVG, drawn here) --------------------------------------------------------
  const W = 600, H = 210, PAD = { l: 64, r: 12, t: 12, b: 26 };
  function scaleY(lo, hi) {
    if (lo === hi) { lo -= 1; hi += 1; }
    const span = hi - lo;
    lo -= span * 0.08; hi += span * 0.08;
    return (v) => PAD.t + (H - PAD.t - PAD.b) * (1 - (v - lo) / (hi - lo));
  }
  function compactUsd(v) {
    const a = Math.abs(v);
    const text = a >= 10000 ? "$" + (a / 1000).toFixed(0) + "k" : a >= 1000 ? "$" + (a / 1000).toFixed(1) + "k" : "$" + a.toFixed(0);
    return (v < 0 ? "−" : "") + text;
  }
  function frame(lo, hi, y) {
    const out = [];
    for (const v of [hi, lo]) {
      if (Math.abs(y(v) - y(0)) >= 12) out.push(s("text", { x: PAD.l - 6, y: y(v) + 4, "text-anchor": "end" }, compactUsd(v)));
    }
    out.push(s("line", { class: "zero", x1: PAD.l, x2: W - PAD.r, y1: y(0), y2: y(0) }));
    out.push(s("text", { x: PAD.l - 6, y: y(0) + 4, "text-anchor": "end" }, "$0"));
    out.push(s("line", { class: "axis", x1: PAD.l, x2: PAD.l, y1: PAD.t, y2: H - PAD.b }));
    return out;
  }
  function equityChart(trades) {
    if (!trades.length) return h("p", { class: "empty" }, "No closed trades yet.");
    const values = [0, ...trades.map((t) => t.cumulative)];
    const lo = Math.min(...values), hi = Math.max(...values);
    const y = scaleY(lo, hi);
    const n = trades.length;
    // Trade i closes at x(i); the curve steps there and runs on to the right edge.
    const x = (i) => PAD.l + (W - PAD.l - PAD.r) * (i / (n + 0.5));
    let path = "M" + x(0) + " " + y(0);
    trades.forEach((t, i) => { path += " H" + x(i + 1) + " V" + y(t.cumulative); });
    path += " H" + (W - PAD.r);
    const area = path + " V" + y(0) + " Z";
    const dots = trades.map((t, i) => s("circle", { class: "pt", cx: x(i + 1), cy: y(t.cumulative), r: 3.5 },
      s("title", {}, "#" + t.id + " closed " + dayName(String(t.closed_at).slice(0, 10)) + ": " + usd(t.realized) + ", total " + usd(t.cumulative))));
    const first = String(trades[0].closed_at).slice(0, 10), last = String(trades[n - 1].closed_at).slice(0, 10);
    return s("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "equity curve: realised P&L after each closed trade", "data-points": n },
      frame(lo, hi, y),
      s("path", { class: "area", d: area }),
      s("path", { class: "curve", d: path }),
      dots,
      s("text", { x: PAD.l, y: H - 8 }, dayName(first)),
      s("text", { x: W - PAD.r, y: H - 8, "text-anchor": "end" }, dayName(last)));
  }
  function perTradeChart(trades) {
    if (!trades.length) return h("p", { class: "empty" }, "No closed trades yet.");
    const values = [0, ...trades.map((t) => t.realized)];
    const lo = Math.min(...values), hi = Math.max(...values);
    const y = scaleY(lo, hi);
    const n = trades.length;
    const slot = (W - PAD.l - PAD.r) / n;
    const bw = Math.max(2, Math.min(36, slot * 0.7));
    const bars = trades.map((t, i) => {
      const cx = PAD.l + slot * (i + 0.5);
      const top = Math.min(y(0), y(t.realized)), height = Math.max(1, Math.abs(y(t.realized) - y(0)));
      const bar = s("rect", { class: "bar " + (t.realized >= 0 ? "pos" : "neg"), x: cx - bw / 2, y: top, width: bw, height: height, "data-trade-id": t.id },
        s("title", {}, "#" + t.id + " " + (t.legs_text || "") + ": " + usd(t.realized)));
      const label = n <= 24 ? s("text", { x: cx, y: H - 8, "text-anchor": "middle" }, "#" + t.id) : null;
      return [bar, label];
    });
    return s("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "realised P&L of each closed trade", "data-bars": n }, frame(lo, hi, y), bars);
  }

  // -- the whole page -------------------------------------------------------------------------
  function render() {
    if (!snap) return;
    tz = snap.exchange_tz || tz;
    const st = snap.status || {};
    renderHeader(st);
    renderHealth(snap);
    renderToday(snap);
    renderPositions(snap);
    renderWorking(snap);
    const trades = snap.closed_trades || [];
    fill("equity", equityChart(trades));
    fill("pertrade", perTradeChart(trades));
    const total = $("realized-total");
    total.textContent = usd(snap.realized_total);
    total.className = "num " + sign(snap.realized_total);
    renderHistory(snap);
    renderAlerts(snap);
    renderSchedule(snap);
    $("started").textContent = "";
    put($("started"), ["Daemon up since ", when(snap.started_at, { date: true })]);
    document.body.dataset.started = snap.started_at || "";
    document.body.dataset.snapshots = String(snapshots);
    if (!rendered) {
      rendered = true;
      performance.mark("bot:first-render");
    }
  }

  function apply(data) {
    if (!data || data.v !== 1) return;
    snap = data;
    snapshots += 1;
    if (num(data.heartbeat_s)) heartbeatMs = data.heartbeat_s * 1000;
    const now = parse(data.now);
    if (now) serverOffsetMs = now.getTime() - Date.now();
    render();
  }

  function clocks() {
    const now = new Date(serverNow());
    $("clock-et").textContent = fmt(tz, { ...DAY, ...TIME }).format(now) + " ET";
    const local = fmt(localZone, TIME).format(now);
    $("clock-local").textContent = local === fmt(tz, TIME).format(now) ? "" : local + " local";
  }

  function setState(next, message) {
    state = next;
    document.body.dataset.connection = next;
    $("conn-text").textContent = next === "live" ? "live" : next === "stale" ? "stale" : next === "down" ? "reconnecting" : "connecting";
    const banner = $("banner");
    if (next === "live" || next === "connecting") {
      banner.hidden = true;
      banner.textContent = "";
      return;
    }
    banner.hidden = false;
    banner.className = "banner" + (next === "stale" ? " warn" : "");
    banner.textContent = message;
  }

  function heard() {
    lastHeard = Date.now();
    downSince = 0;
    retryMs = 1000;
  }

  function lastUpdate() {
    return fmt(tz, TIME).format(new Date(lastHeard + serverOffsetMs)) + " ET";
  }

  function down(why) {
    if (!downSince) downSince = Date.now();
    setState("down", why + " Reconnecting by itself; what you see is as of " + lastUpdate() + ".");
  }

  function tick() {
    clocks();
    if (state === "live" && Date.now() - lastHeard > STALE_AFTER * heartbeatMs) {
      setState("stale", "Stale: nothing heard from the daemon since " + lastUpdate() + "; the numbers may be out of date.");
    } else if (state === "down") {
      down(downSince && Date.now() - downSince > 1500 ? "The daemon is not answering." : "The connection to the daemon was lost.");
    }
  }

  function connect() {
    clearTimeout(retryTimer);
    if (source) source.close();
    source = new EventSource("/events?token=" + encodeURIComponent(token));
    source.addEventListener("snapshot", (e) => {
      heard();
      apply(JSON.parse(e.data));
      if (state !== "live" && !performance.getEntriesByName("bot:live").length) performance.mark("bot:live");
      setState("live");
    });
    source.addEventListener("ping", (e) => {
      heard();
      const p = JSON.parse(e.data);
      if (num(p.heartbeat_s)) heartbeatMs = p.heartbeat_s * 1000;
      const now = parse(p.now);
      if (now) serverOffsetMs = now.getTime() - Date.now();
      if (state !== "live") setState("live");
    });
    source.addEventListener("bye", () => down("The daemon is stopping (a restart?)."));
    source.addEventListener("error", () => {
      if (state !== "down") down("The connection to the daemon was lost.");
      if (source.readyState === EventSource.CLOSED) {
        // EventSource gives up on an HTTP error; keep trying, more slowly.
        retryTimer = setTimeout(connect, retryMs);
        retryMs = Math.min(retryMs * 2, 10000);
      }
    });
  }

  try {
    apply(JSON.parse($("snapshot").textContent || "null"));
  } catch (_err) {
    snap = null;
  }
  clocks();
  setInterval(tick, 1000);
  connect();
})();
