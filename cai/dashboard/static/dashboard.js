// The dashboard page: renders each snapshot the server pushes over Server-Sent Events (/events).
// Charts are Chart.js (served from /vendor, fetched by `cai setup`); tables are plain HTML.
(() => {
  "use strict";
  const STAGE_TOPICS = ["prompts", "critique", "revise", "compare", "sft", "preferences"];
  const COLORS = ["#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#be185d",
                  "#4b5563"];
  const HISTORY = 300;  // points of the rate chart (about five minutes)
  const state = {charts: {}, last: null, received: 0, rates: {labels: [], series: {}},
                 expanded: new Set(), rendered: {}};
  window.caiDashboard = state;

  const $ = (selector) => document.querySelector(selector);
  const esc = (value) => String(value ?? "").replace(/[&<>"']/g, (c) => (
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
  const time = (stamp) => stamp ? new Date(stamp * 1000).toLocaleTimeString() : "-";
  const pct = (value) => value == null ? "-" : `${(100 * value).toFixed(1)}%`;
  const num = (value, digits = 3) => value == null ? "-" : Number(value).toFixed(digits);
  const share = (s) => s ? `${pct(s.value)} [${pct(s.ci95?.[0])}, ${pct(s.ci95?.[1])}] (n=${s.n})`
                         : "-";
  const link = (id) => id && id !== "-"
    ? `<a class="prompt-link" href="/lineage/${encodeURIComponent(id)}">${esc(id)}</a>` : "-";
  const pairs = (obj, digits) => Object.entries(obj || {})
    .map(([k, v]) => `${esc(k)}=${digits == null ? esc(v) : num(v, digits)}`).join(" ") || "-";

  // Rows are replaced only when they change, so that a click is not lost to a re-render.
  function setRows(table, rows) {
    const html = rows.join("");
    if (state.rendered[table] !== html) {
      $(`#${table} tbody`).innerHTML = html;
      state.rendered[table] = html;
    }
  }

  // --- charts --------------------------------------------------------------------------
  function chart(id, config) {
    if (!window.Chart || state.charts[id]) return state.charts[id];
    const canvas = document.getElementById(id);
    if (!canvas) return null;
    config.options = Object.assign({responsive: true, maintainAspectRatio: false,
                                    animation: false}, config.options || {});
    state.charts[id] = new window.Chart(canvas, config);
    return state.charts[id];
  }

  function renderRates(snap) {
    const rates = state.rates;
    rates.labels.push(time(snap.time));
    for (const topic of STAGE_TOPICS) {
      (rates.series[topic] ||= []).push(snap.topics?.[topic]?.per_second ?? 0);
    }
    if (rates.labels.length > HISTORY) {
      rates.labels.shift();
      Object.values(rates.series).forEach((values) => values.shift());
    }
    const c = chart("rate-chart", {
      type: "line",
      data: {labels: rates.labels, datasets: STAGE_TOPICS.map((topic, i) => ({
        label: topic, data: rates.series[topic], borderColor: COLORS[i], pointRadius: 0,
        borderWidth: 1.5, tension: 0.2}))},
      options: {scales: {y: {beginAtZero: true, title: {display: true, text: "messages/s"}},
                         x: {ticks: {maxTicksLimit: 8}}}},
    });
    if (c) c.update("none");
  }

  function renderLatency(snap) {
    const stages = Object.keys(snap.latency || {});
    setRows("latency", stages.map((stage) => {
      const p = snap.latency[stage];
      return `<tr data-stage="${esc(stage)}"><td>${esc(stage)}</td><td>${num(p.p50, 2)}</td>` +
             `<td>${num(p.p90, 2)}</td><td>${num(p.p99, 2)}</td><td>${p.n ?? 0}</td></tr>`;
    }));
    const c = chart("latency-chart", {
      type: "bar",
      data: {labels: [], datasets: [
        {label: "p50 s", data: [], backgroundColor: COLORS[0]},
        {label: "p90 s", data: [], backgroundColor: COLORS[1]}]},
      options: {scales: {y: {beginAtZero: true}}},
    });
    if (!c) return;
    c.data.labels = stages;
    c.data.datasets[0].data = stages.map((s) => snap.latency[s].p50 ?? null);
    c.data.datasets[1].data = stages.map((s) => snap.latency[s].p90 ?? null);
    c.update("none");
  }

  function curveDatasets(points, versions, color, dashed, source) {
    const at = (key) => versions.map((v) => {
      const p = points.find((q) => q.version === v);
      return p ? 100 * p[key] : null;
    });
    const meta = versions.map((v) => points.find((q) => q.version === v) || null);
    const band = color + "33";
    return [
      {label: `${source} lo`, data: at("lo"), borderWidth: 0, pointRadius: 0, fill: false,
       band: true, spanGaps: true},
      {label: `${source} hi`, data: at("hi"), borderWidth: 0, pointRadius: 0, fill: "-1",
       backgroundColor: band, band: true, spanGaps: true},
      {label: source, data: at("value"), borderColor: color, backgroundColor: color,
       borderDash: dashed ? [6, 4] : [], pointRadius: 4, spanGaps: true, meta},
    ];
  }

  function renderCurve(snap) {
    const curve = snap.curve || {versions: [], series: {}};
    const versions = curve.versions || [];
    let shown = 0;
    for (const [name, series] of Object.entries(curve.series || {})) {
      const c = chart(`curve-${name}`, {
        type: "line", data: {labels: [], datasets: []},
        options: {
          scales: {y: {min: 0, max: 100, title: {display: true, text: "%"}}},
          plugins: {
            legend: {labels: {usePointStyle: true,
                              filter: (item, data) => !data.datasets[item.datasetIndex].band}},
            tooltip: {filter: (item) => !item.dataset.band, callbacks: {
              label: (item) => {
                const p = item.dataset.meta?.[item.dataIndex];
                return p ? `${item.dataset.label}: ${pct(p.value)} [${pct(p.lo)}, ${pct(p.hi)}]` +
                           ` (${p.hits}/${p.n})` : item.dataset.label;
              }}},
          },
        },
      });
      shown += series.dev.length + series.held_out.length;
      if (!c) continue;
      c.data.labels = versions.map((v) => `v${v}`);
      c.data.datasets = [
        ...curveDatasets(series.dev, versions, COLORS[0], false, "dev split (gate)"),
        ...curveDatasets(series.held_out, versions, COLORS[1], true, "held-out (report)"),
      ];
      c.update("none");
    }
    $("#curve-note").textContent = shown ? (snap.report ? `held-out figures: ${snap.report}` : "")
      : "No figures yet: rounds whose summary carries the gate's figures, or a `cai run` " +
        "report (--report), fill these charts.";
  }

  function renderRounds(snap) {
    const rounds = snap.rounds || [];
    setRows("rounds", rounds.map((r) => {
      const version = r.promoted && r.version != null ? `v${r.version_before ?? "?"} → <b>v${r.version}</b>`
        : `stays v${r.version_before ?? "?"}`;
      const outcome = r.promoted ? `<span class="tag ok">promoted</span>`
        : `<span class="tag bad">rejected</span> ${esc((r.reasons || []).join("; "))}`;
      const gate = Object.entries(r.gate || {}).map(([name, g]) =>
        `<div>${esc(name)}: ${pct(g.before?.value)} → ${pct(g.after?.value)}</div>`).join("");
      return `<tr data-round="${r.round}" class="${r.promoted ? "" : "rejected"}">` +
        `<td>${r.round}</td><td>${time(r.time)}</td><td>${outcome}</td><td>${version}</td>` +
        `<td>${pairs(r.examples)}</td><td>${pairs(r.losses, 3)}</td>` +
        `<td>${gate || "-"}</td></tr>`;
    }));
    const ordered = [...rounds].reverse();
    const names = [...new Set(ordered.flatMap((r) => Object.keys(r.losses || {})))];
    const c = chart("loss-chart", {
      type: "line", data: {labels: [], datasets: []},
      options: {scales: {x: {title: {display: true, text: "round"}},
                         y: {title: {display: true, text: "mean loss"}}}},
    });
    if (!c) return;
    c.data.labels = ordered.map((r) => r.round);
    c.data.datasets = names.map((name, i) => ({
      label: `loss/${name}`, data: ordered.map((r) => r.losses?.[name] ?? null),
      borderColor: COLORS[i % COLORS.length], spanGaps: true}));
    c.update("none");
  }

  function renderDead(snap) {
    const dead = snap.dead_letters || {rows: [], by_stage: {}, total: 0};
    const select = $("#dead-stage");
    for (const stage of Object.keys(dead.by_stage)) {
      if (![...select.options].some((o) => o.value === stage)) {
        select.add(new Option(stage, stage));
      }
    }
    $("#dead-summary").textContent = dead.total
      ? `${dead.total} in the window · ` + Object.entries(dead.by_reason || {})
          .map(([k, v]) => `${k}: ${v}`).join(" · ")
      : "none";
    const wanted = select.value;
    setRows("dead", dead.rows.filter((r) => !wanted || r.stage === wanted).map((r) => {
      const key = `${r.partition}/${r.offset}`;
      return `<tr class="dead-row" tabindex="0" data-key="${esc(key)}"><td>${time(r.time)}</td>` +
        `<td>${esc(r.stage)}</td><td>${link(r.prompt_id)}</td><td>${esc(r.topic)}</td>` +
        `<td>${esc(r.reason)}</td><td>${r.attempts ?? "-"}</td>` +
        `<td>${r.payload_bytes ?? "-"}${r.truncated ? " (cut)" : ""}</td></tr>` +
        `<tr class="payload"${state.expanded.has(key) ? "" : " hidden"}><td colspan="7">` +
        `<pre>${esc(r.payload)}</pre></td></tr>`;
    }));
  }

  // Online RL: shown only once the trainer has sent samples or scored a round with a reward model.
  function renderRL(snap) {
    const rl = snap.rl || {total: 0, rounds: [], rows: [], reward_model: null};
    const pm = rl.reward_model;
    $("#rl-card").hidden = !rl.total && !pm;
    const latest = rl.rounds[0];
    $("#rl").innerHTML = [
      ["samples in the window", rl.total],
      ["newest round mean reward", latest ? num(latest.mean_reward) : "-"],
      ["preference model held-out accuracy", pm && pm.heldout_accuracy != null
        ? `${pct(pm.heldout_accuracy)}${pm.heldout_pairs != null ? ` (n=${pm.heldout_pairs})` : ""}`
        : "-"],
      ["reward model version", pm?.version != null ? `v${pm.version}` : "-"],
    ].map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
    setRows("rl-rounds", rl.rounds.map((r) =>
      `<tr data-round="${esc(r.round)}"><td>${esc(r.round)}</td><td>${r.samples}</td>` +
      `<td>${num(r.mean_reward)}</td><td>${num(r.mean_tokens, 1)}</td>` +
      `<td>${esc(r.policy_versions.join(", "))}</td><td>${esc(r.reward_versions.join(", "))}</td>` +
      `</tr>`));
    setRows("rl-samples", rl.rows.map((r) =>
      `<tr><td>${link(r.prompt_id)}</td><td>${time(r.time)}</td><td>${esc(r.round)}</td>` +
      `<td>${esc(r.sample)}</td><td>${esc(r.kind)}</td><td>${esc(r.prompt)}</td>` +
      `<td>${esc(r.answer)}</td><td>${num(r.reward)}</td><td>${num(r.advantage)}</td>` +
      `<td>${r.tokens ?? "-"}</td></tr>`));
  }

  function render(snap) {
    state.last = snap;
    state.received += 1;
    $("#serving-version").textContent = snap.serving_policy_version ?? "-";
    $("#updated").textContent = time(snap.time);
    const errors = snap.errors || [];
    $("#errors").hidden = !errors.length;
    $("#errors").textContent = errors.join(" · ");

    setRows("topics", Object.entries(snap.topics || {}).map(([topic, f]) => {
      const lag = f.lag || {};
      return `<tr data-topic="${esc(topic)}"><td>${esc(snap.prefix || "")}${esc(topic)}</td>` +
        `<td class="total">${f.total}</td><td class="rate">${f.per_second}</td>` +
        `<td>${f.per_minute}</td><td>${lag.worker ?? "-"}</td>` +
        `<td>${lag.trainer ?? "-"}</td><td>${snap.in_flight?.[topic] ?? "-"}</td></tr>`;
    }));
    setRows("counters", Object.entries(snap.counters || {}).map(([stage, c]) =>
      `<tr data-stage="${esc(stage)}"><td>${esc(stage)}</td><td>${c.in}</td><td>${c.out}</td>` +
      `<td>${c.skipped}</td><td>${c.dead}</td></tr>`));

    const judge = snap.judge || {};
    $("#judge").innerHTML = [
      ["labels", judge.labels ?? 0],
      ["order-swap agreement", share(judge.order_agreement_share)],
      ["answer shown first wins", pct(judge.first_position_wins)],
      ["mean p(chosen)", num(judge.mean_p_chosen)],
      ["labels by strategy", pairs(judge.preferences_by_strategy)],
    ].map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
    setRows("principles", Object.entries(snap.principles || {}).map(([id, p]) =>
      `<tr><td>${esc(id)}</td><td>${p.rounds}</td><td>${pct(p.no_change_rate)}</td>` +
      `<td>${num(p.judge_margin, 2)}</td><td>${p.labels}</td></tr>`));
    setRows("examples", (snap.examples || []).map((e) =>
      `<tr><td>${link(e.prompt_id)}</td><td>${time(e.time)}</td><td>${esc(e.kind)}</td>` +
      `<td>${esc(e.prompt)}</td><td>${esc(e.answer)}</td><td>${esc(e.final)}</td>` +
      `<td>${e.rounds}</td><td>${e.policy_version ?? "-"}</td><td>${num(e.p_chosen, 2)}</td></tr>`));

    renderRates(snap);
    renderLatency(snap);
    renderCurve(snap);
    renderRounds(snap);
    renderDead(snap);
    renderRL(snap);
  }

  $("#dead-stage").addEventListener("change", () => state.last && renderDead(state.last));
  $("#dead tbody").addEventListener("click", (event) => {
    const row = event.target.closest("tr.dead-row");
    if (!row || event.target.closest("a")) return;
    const payload = row.nextElementSibling;
    payload.hidden = !payload.hidden;
    if (payload.hidden) state.expanded.delete(row.dataset.key);
    else state.expanded.add(row.dataset.key);
  });

  function setStatus(text, ok) {
    $("#status-text").textContent = text;
    $("#status").classList.toggle("live", ok);
  }

  const source = new EventSource("/events");
  source.addEventListener("snapshot", (event) => render(JSON.parse(event.data)));
  source.onopen = () => setStatus("live", true);
  source.onerror = () => setStatus("reconnecting", false);
  if (!window.Chart) setStatus("charts missing: run `cai setup`", false);
})();
