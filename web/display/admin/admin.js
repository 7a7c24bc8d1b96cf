// The display admin page: a thin client of /api/display/admin/ (see
// worker/src/apps/display/admin.rs). No framework: one overview request every
// `refresh` seconds redraws the schools table; every button is one request,
// followed by a redraw. Destructive buttons (unbind) want a second click
// within 4 s. <body data-state> is "signed-out", "ready" or "error" (tests wait on it).
"use strict";
(function () {
  const q = new URLSearchParams(location.search);
  const api = (q.get("api") || location.origin).replace(/\/$/, "");
  const refreshEvery = (parseFloat(q.get("refresh")) > 0 ? parseFloat(q.get("refresh")) : 5) * 1000;
  const $ = (id) => document.getElementById(id);
  let token = sessionStorage.getItem("display_admin_token") || "";
  let overview = null;
  let timer = null;
  let rolloutEdited = false;

  function status(text, isError) {
    $("status").textContent = text || "";
    $("status").className = isError ? "error" : "";
  }

  // One admin request; throws an Error carrying the API's `detail`.
  async function call(method, path, body) {
    const headers = { Authorization: `Bearer ${token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(`${api}/api/display/admin/${path}`, {
      method, headers, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body),
    });
    const answer = await res.json().catch(() => ({}));
    if (!res.ok) {
      const error = new Error(answer.detail || `HTTP ${res.status}`);
      error.status = res.status;
      throw error;
    }
    return answer;
  }

  // Runs an action; reports its outcome (what it returns, else `label`) and redraws.
  async function act(label, action) {
    try {
      const said = await action();
      status(typeof said === "string" ? said : label);
    } catch (e) {
      status(`${label} failed: ${e.message}`, true);
    }
    await refresh();
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else if (k.startsWith("data-")) node.setAttribute(k, v); else node[k] = v;
    }
    for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
    return node;
  }

  // A button that acts on the second click within 4 s. Which button is armed is
  // kept by `key` across redraws (the table is redrawn every refresh).
  let armed = { key: null, until: 0 };
  function confirmButton(key, text, title, onConfirm) {
    const isArmed = () => armed.key === key && Date.now() < armed.until;
    const button = el("button", { class: isArmed() ? "danger confirming" : "danger", title },
      isArmed() ? "Click again to confirm" : text);
    button.onclick = () => {
      if (isArmed()) {
        armed = { key: null, until: 0 };
        onConfirm();
        return;
      }
      armed = { key, until: Date.now() + 4000 };
      button.textContent = "Click again to confirm";
      button.classList.add("confirming");
      setTimeout(() => { if (!isArmed()) { button.textContent = text; button.classList.remove("confirming"); } }, 4100);
    };
    return button;
  }

  function ago(ms) {
    if (!ms) return "never";
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    return s < 120 ? `${s} s ago` : `${Math.round(s / 60)} min ago`;
  }

  function draw() {
    const o = overview;
    $("ws-state").textContent = o.ws_enabled ? "on" : "off";
    $("ws-state").className = o.ws_enabled ? "on" : "off";
    $("ws-toggle").textContent = o.ws_enabled ? "Turn sockets off" : "Turn sockets on";
    $("ws-toggle").disabled = false;
    $("rollout-apply").disabled = false;
    if (!rolloutEdited) {   // never overwrite what the operator is typing
      $("rollout-schools").value = o.rollout.schools.join(", ");
      $("rollout-percent").value = String(o.rollout.percent);
    }
    $("rollout-note").textContent = o.rollout_stored
      ? "A school is in when named or when its bucket (0–99, fixed per school) is below the percentage."
      : "No rollout stored yet: every school is in while the switch is on.";
    const t = o.totals;
    $("totals").textContent = `screens on a socket: ${t.ws} · polling although their school has sockets: ${t.fallback}` +
      ` (ratio ${(t.polling_ratio * 100).toFixed(1)} %) · polling by design: ${t.polling} · offline: ${t.offline}`;
    const body = $("schools");
    body.textContent = "";
    for (const school of o.schools) {
      const counts = {};
      for (const s of school.screens) counts[s.mode] = (counts[s.mode] || 0) + 1;
      const summary = Object.entries(counts).map(([m, n]) => `${n} ${m}`).join(", ");
      body.append(el("tr", { class: "school", "data-school": school.id },
        el("td", {}, school.id),
        el("td", {}, school.name),
        el("td", { class: "revision" }, `rev ${school.revision}`),
        el("td", { class: "sockets" },
          el("span", { class: school.sockets ? "on" : "off" }, school.sockets ? "sockets on" : "sockets off"),
          ` · bucket ${school.bucket}`),
        el("td", {},
          el("button", { class: "edit", onclick: () => openEditor(school.id) }, "Edit schedule"), " ",
          confirmButton(`school:${school.id}`, "Unbind all", "Unbind every screen of this school; their sockets close with 4408",
            () => act(`unbound every screen of ${school.id}`, () => call("DELETE", `schools/${encodeURIComponent(school.id)}/bindings/`))),
          " ", el("span", { class: "muted" }, summary)),
      ));
      for (const screen of school.screens) {
        body.append(el("tr", { class: "screen", "data-token": screen.token, "data-school": school.id },
          el("td", { class: "token" }, screen.token),
          el("td", { class: "device" }, screen.device ?? "(unbound)"),
          el("td", { class: `mode mode-${screen.mode}` }, screen.mode),
          el("td", { class: "muted" }, `${screen.sockets} socket(s) · polled ${ago(screen.last_poll_ms)}`),
          el("td", {}, screen.device === null ? "" :
            confirmButton(`screen:${screen.token}`, "Unbind", "The next device to fetch binds this screen; open sockets close with 4408",
              () => act(`unbound ${screen.token}`, () => call("DELETE", `screens/${encodeURIComponent(screen.token)}/binding/`)))),
        ));
      }
    }
  }

  async function refresh() {
    clearTimeout(timer);
    if (!token) { document.body.dataset.state = "signed-out"; return; }
    try {
      overview = await call("GET", "overview/");
      draw();
      document.body.dataset.state = "ready";
    } catch (e) {
      document.body.dataset.state = "error";
      status(e.status === 401 || e.status === 403 ? `not signed in: ${e.message}` : `cannot load: ${e.message}`, true);
    }
    timer = setTimeout(refresh, refreshEvery);
  }

  // --- schedule editor -------------------------------------------------------------------
  let editing = null;   // {school, schedule}

  function periodRow(p) {
    const input = (cls, value) => el("input", { type: "text", class: cls, value: value || "" });
    const row = el("tr", { class: "period" }, el("td", {}, input("time", p.time)), el("td", {}, input("subject", p.subject)),
      el("td", {}, input("room", p.room)));
    row.append(el("td", {}, el("button", { class: "remove", onclick: () => row.remove() }, "Remove")));
    return row;
  }

  async function openEditor(school) {
    try {
      const answer = await call("GET", `schools/${encodeURIComponent(school)}/schedule/`);
      const schedule = answer.schedule && typeof answer.schedule === "object" ? answer.schedule : {};
      editing = { school, schedule };
      $("editor-school").textContent = school;
      $("editor-revision").textContent = String(answer.revision);
      $("editor-title").value = schedule.title || "";
      $("periods").textContent = "";
      for (const p of schedule.periods || []) $("periods").append(periodRow(p));
      $("editor").hidden = false;
    } catch (e) {
      status(`cannot open the schedule of ${school}: ${e.message}`, true);
    }
  }

  async function saveSchedule() {
    if (!editing) return;
    const periods = [...$("periods").querySelectorAll("tr.period")].map((row) => ({
      time: row.querySelector(".time").value.trim(),
      subject: row.querySelector(".subject").value.trim(),
      room: row.querySelector(".room").value.trim(),
    })).filter((p) => p.time || p.subject || p.room);
    // Other fields of the schedule are kept as they were.
    const schedule = { ...editing.schedule, title: $("editor-title").value.trim(), periods };
    const school = editing.school;
    await act(`saved the schedule of ${school}`, async () => {
      const answer = await call("PUT", `schools/${encodeURIComponent(school)}/schedule/`, schedule);
      $("editor-revision").textContent = String(answer.revision);
      editing.schedule = schedule;
    });
  }

  // --- wiring ----------------------------------------------------------------------------
  $("token").value = token;
  $("signin-form").onsubmit = (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem("display_admin_token", token);
    status("");
    refresh();
  };
  $("ws-toggle").onclick = () => {
    const enabled = !(overview && overview.ws_enabled);
    act(`sockets switched ${enabled ? "on" : "off"}`, () => call("PUT", "ws-enabled/", { enabled }));
  };
  $("rollout-apply").onclick = () => {
    const schools = $("rollout-schools").value.split(/[\s,]+/).filter(Boolean);
    const percent = Number($("rollout-percent").value);
    act("rollout applied", async () => {
      const answer = await call("PUT", "ws-rollout/", { schools, percent });
      rolloutEdited = false;
      const moved = [];
      if (answer.switched_on.length) moved.push(`sockets on for ${answer.switched_on.join(", ")}`);
      if (answer.switched_off.length) moved.push(`off for ${answer.switched_off.join(", ")}`);
      return moved.length ? `rollout applied: ${moved.join("; ")}` : "rollout applied: no school switched";
    });
  };
  for (const id of ["rollout-schools", "rollout-percent"]) $(id).addEventListener("input", () => { rolloutEdited = true; });
  $("add-period").onclick = () => $("periods").append(periodRow({}));
  $("save-schedule").onclick = saveSchedule;
  $("close-editor").onclick = () => { editing = null; $("editor").hidden = true; };
  refresh();
})();
