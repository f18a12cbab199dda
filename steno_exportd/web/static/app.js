// Silent Steno web page: seek on transcript click, live progress (SSE), cancel/eject/send-to buttons.
"use strict";
(function () {
  const csrf = (document.querySelector('meta[name="csrf"]') || {}).content || "";

  // Transcript: clicking a line seeks the recording there and plays.
  const player = document.getElementById("player");
  document.addEventListener("click", function (e) {
    const seg = e.target.closest && e.target.closest("[data-start]");
    if (seg && player) {
      player.currentTime = parseFloat(seg.dataset.start);
      const p = player.play();
      if (p && p.catch) p.catch(function () {});
      document.querySelectorAll(".transcript li.current").forEach(function (li) { li.classList.remove("current"); });
      seg.parentElement.classList.add("current");
    }
    const cancel = e.target.closest && e.target.closest("[data-cancel]");
    if (cancel) post("/api/v1/jobs/" + cancel.dataset.cancel + "/cancel");
    const eject = e.target.closest && e.target.closest("[data-eject]");
    if (eject) post("/api/v1/devices/" + encodeURIComponent(eject.dataset.eject) + "/eject");
    const push = e.target.closest && e.target.closest("[data-push]");
    if (push) sendTo(push);
  });

  // A search result opens the meeting at its line (#t=SECONDS): that line marked and in view, the player there.
  const at = /^#t=(\d+(?:\.\d+)?)$/.exec(location.hash);
  if (at) {
    const want = parseFloat(at[1]);
    let line = null;
    document.querySelectorAll(".transcript [data-start]").forEach(function (b) {
      if (parseFloat(b.dataset.start) <= want + 0.001) line = b;
    });
    if (line) {
      line.parentElement.classList.add("current");
      line.scrollIntoView({block: "center"});
      line.focus({preventScroll: true});
    }
    if (player) player.currentTime = want;
  }

  // "Send to <remote>": a push job through the API; its progress is on the sticks & jobs page.
  function sendTo(btn) {
    const msg = document.getElementById("push-msg"), remote = btn.dataset.push;
    const ids = btn.dataset.sessions ? btn.dataset.sessions.split(",") :
      Array.from(document.querySelectorAll("#selection input[name=id]:checked"), function (i) { return i.value; });
    function fail(text) { msg.textContent = text; msg.className = "error"; msg.hidden = false; btn.disabled = false; }
    if (!ids.length) return fail("Select at least one meeting to send to " + remote + ".");
    btn.disabled = true;
    msg.hidden = true;
    fetch("/api/v1/exports", { method: "POST", credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, "Content-Type": "application/json" },
      body: JSON.stringify({ sessions: ids.map(function (x) { return /^\d+$/.test(x) ? Number(x) : x; }),
                             target: "smb:" + remote }) })
      .then(function (r) {
        return r.json().catch(function () { return { error: r.status + " " + r.statusText }; })
          .then(function (j) {
            if (r.ok) { location.href = "/devices"; return; }
            fail("Could not send to " + remote + ": " + (j.error || r.statusText));
          });
      })
      .catch(function (err) { fail("Could not send to " + remote + ": " + err.message); });
  }

  function post(url) {
    fetch(url, { method: "POST", headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? null : r.json().then(function (j) { alert(j.error || r.statusText); }); });
  }

  // Live devices and jobs.
  const jobs = document.querySelector("#jobs tbody"), devices = document.querySelector("#devices tbody");
  const live = document.getElementById("live");
  if (!jobs || !window.EventSource) return;
  const es = new EventSource("/api/v1/events");
  es.onopen = function () { live.textContent = "Live."; };
  es.onerror = function () { live.textContent = "Connection lost; reconnecting…"; };
  function row(tbody, id, cells) {
    let tr = tbody.querySelector('tr[data-id="' + CSS.escape(String(id)) + '"]');
    const empty = tbody.querySelector("tr.empty"); if (empty) empty.remove();
    if (!tr) { tr = document.createElement("tr"); tr.dataset.id = id; tbody.prepend(tr); }
    tr.replaceChildren.apply(tr, cells.map(function (c) {
      const td = document.createElement("td");
      if (c instanceof Node) td.appendChild(c); else td.textContent = c;
      return td;
    }));
    return tr;
  }
  function button(label, attr, value) {
    const b = document.createElement("button"); b.type = "button"; b.textContent = label; b.dataset[attr] = value; return b;
  }
  es.addEventListener("job", function (e) {
    const j = JSON.parse(e.data), pct = Math.round(j.progress * 100);
    const bar = document.createElement("span");
    const p = document.createElement("progress"); p.max = 1; p.value = j.progress; bar.appendChild(p);
    const t = document.createElement("span"); t.className = "pct"; t.textContent = " " + pct + " %"; bar.appendChild(t);
    const active = j.state === "queued" || j.state === "running";
    const tr = row(jobs, j.id, [String(j.id), j.operation, j.target, bar, j.state + (j.error ? ": " + j.error : ""),
      active ? button("Cancel", "cancel", j.id) : ""]);
    tr.children[4].className = "state";
  });
  es.addEventListener("job_removed", function (e) {
    const tr = jobs.querySelector('tr[data-id="' + JSON.parse(e.data).id + '"]'); if (tr) tr.remove();
  });
  es.addEventListener("device", function (e) {
    const d = JSON.parse(e.data);
    const tr = row(devices, d.id, [d.label || d.id, d.fs_type, Math.round(d.free / 1048576) + " MiB",
      d.state + (d.error ? ": " + d.error : "") + (d.skip_reason ? " (not exported: " + d.skip_reason + ")" : ""), d.mount_point ? button("Eject", "eject", d.id) : ""]);
    tr.children[3].className = "state";
  });
  es.addEventListener("status", function (e) {
    const st = JSON.parse(e.data), el = document.getElementById("sharing-state");
    if (!el || (st.key !== "samba_enabled" && st.key !== "samba_state")) return;
    if (st.key === "samba_enabled") el.dataset.enabled = st.value ? "true" : "false";
    else el.dataset.state = String(st.value);
    // the same words as views.sharing_label
    const state = el.dataset.state || "off", bad = state.indexOf("error") === 0;
    el.textContent = state === "serving" ? "on — serving" : bad ? state :
      el.dataset.enabled === "true" ? "on — not serving yet" : "off";
    el.classList.toggle("error", bad);
  });
  es.addEventListener("device_removed", function (e) {
    const tr = devices.querySelector('tr[data-id="' + CSS.escape(JSON.parse(e.data).id) + '"]'); if (tr) tr.remove();
  });
})();
