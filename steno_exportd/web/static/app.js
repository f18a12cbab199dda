// Silent Steno web page: local times, select all, the transcript (load on demand, seek, follow, find), copy,
// live progress (SSE), cancel/eject/send-to buttons. Every page works without it.
"use strict";
(function () {
  const csrf = (document.querySelector('meta[name="csrf"]') || {}).content || "";

  // Times in the browser's own locale and time zone (the server's text stays when scripts are off).
  const fmts = {
    datetime: new Intl.DateTimeFormat(undefined, {dateStyle: "medium", timeStyle: "short"}),
    date: new Intl.DateTimeFormat(undefined, {dateStyle: "medium"}),
    day: new Intl.DateTimeFormat(undefined, {dateStyle: "medium", timeZone: "UTC"})   // a calendar day as it is
  };
  function localTimes(root) {
    root.querySelectorAll("time[datetime][data-style]").forEach(function (el) {
      const d = new Date(el.getAttribute("datetime")), f = fmts[el.dataset.style];
      if (f && !isNaN(d)) { el.title = el.textContent; el.textContent = f.format(d); }
    });
  }
  localTimes(document);

  // "Select all" on the meetings list: ticks every box on the page (without scripts it reloads the page so).
  const selectAll = document.querySelector("[data-select-all]");
  if (selectAll) selectAll.addEventListener("click", function (e) {
    e.preventDefault();
    const boxes = document.querySelectorAll("#selection input[name=id]");
    const on = Array.prototype.some.call(boxes, function (b) { return !b.checked; });
    boxes.forEach(function (b) { b.checked = on; });
    selectAll.textContent = on ? "Select none" : "Select all";
  });

  // The transcript: the rest loads on demand; clicking a line (or a turn in the timeline) plays from there;
  // the line being played is marked and kept in view; the find box filters the lines.
  const player = document.getElementById("player");
  const list = document.getElementById("transcript");
  const more = document.getElementById("tr-more");
  let loading = null, userScrolled = 0;
  function loadedCount() { return list ? list.children.length : 0; }
  function total() { return list ? parseInt(list.dataset.total, 10) : 0; }
  function loadMore() {          // the next piece; resolves when it is in the page
    if (!list || loadedCount() >= total()) return Promise.resolve(false);
    if (loading) return loading;
    loading = fetch("/sessions/" + list.dataset.session + "/transcript?from=" + loadedCount() + "&count=500",
                    {credentials: "same-origin"})
      .then(function (r) { if (!r.ok) throw new Error(r.statusText); return r.text(); })
      .then(function (html) {
        list.insertAdjacentHTML("beforeend", html);
        if (findInput && findInput.value.trim()) filter(findInput.value);
        if (more && loadedCount() >= total()) more.remove();
        loading = null;
        return true;
      })
      .catch(function () { loading = null; return false; });
    return loading;
  }
  function loadAll() {
    return loadMore().then(function (got) { return got && loadedCount() < total() ? loadAll() : null; });
  }
  if (more && window.IntersectionObserver) {
    new IntersectionObserver(function (entries) {
      if (entries.some(function (x) { return x.isIntersecting; })) loadMore();
    }, {rootMargin: "800px"}).observe(more);
  }
  window.addEventListener("scroll", function () { userScrolled = Date.now(); }, {passive: true});
  ["wheel", "touchmove", "keydown"].forEach(function (ev) {
    window.addEventListener(ev, function () { userScrolled = Date.now(); }, {passive: true});
  });
  function lineAt(seconds) {      // the last loaded line starting at or before seconds
    const items = list ? list.children : [];
    let lo = 0, hi = items.length - 1, found = null;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1, b = items[mid].querySelector("[data-start]");
      if (parseFloat(b.dataset.start) <= seconds + 0.001) { found = items[mid]; lo = mid + 1; } else hi = mid - 1;
    }
    return found;
  }
  function mark(li, scroll) {
    if (!li || li.classList.contains("current")) return;
    list.querySelectorAll("li.current").forEach(function (x) { x.classList.remove("current"); });
    li.classList.add("current");
    if (scroll) li.scrollIntoView({block: "center"});
  }
  function inView(el) {
    const r = el.getBoundingClientRect();
    return r.top >= 0 && r.bottom <= window.innerHeight;
  }
  function seek(seconds, play) {
    const last = list && list.lastElementChild && parseFloat(list.lastElementChild.querySelector("[data-start]").dataset.start);
    const ready = list && loadedCount() < total() && !(last > seconds) ? loadAll() : Promise.resolve();
    ready.then(function () {
      const li = lineAt(seconds);
      if (li) { mark(li, true); li.querySelector("[data-start]").focus({preventScroll: true}); }
    });
    if (player) {
      player.currentTime = seconds;
      if (play) { const p = player.play(); if (p && p.catch) p.catch(function () {}); }
    }
  }
  if (player && list) {
    player.addEventListener("timeupdate", function () {
      const li = lineAt(player.currentTime);
      if (!li) return;
      const keep = !player.paused && Date.now() - userScrolled > 4000;
      if (!li.classList.contains("current")) mark(li, false);
      if (keep && !inView(li)) li.scrollIntoView({block: "center"});
      if (!player.paused && li === list.lastElementChild) loadMore();
    });
  }
  function atHash(play) {           // #t=SECONDS: a search result or a timeline turn
    const at = /^#t=(\d+(?:\.\d+)?)$/.exec(location.hash);
    if (at) seek(parseFloat(at[1]), play);
  }
  atHash(false);
  window.addEventListener("hashchange", function () { atHash(true); });

  // Find in the transcript: lines without the words are hidden; accents and case do not matter.
  const findForm = document.querySelector("form[data-find]");
  const findInput = findForm && findForm.querySelector("input[name=find]");
  const findStatus = document.getElementById("find-status");
  function fold(s) { return s.normalize("NFKD").replace(/[\u0300-\u036f]/g, "").toLowerCase(); }
  function filter(text) {
    const want = fold(text.trim());
    let n = 0;
    Array.prototype.forEach.call(list.children, function (li) {
      const hit = !want || fold(li.textContent).indexOf(want) >= 0;
      li.hidden = !hit;
      if (hit && want) n++;
    });
    if (findStatus) findStatus.textContent = want ? n + (n === 1 ? " line" : " lines") + " with “" + text.trim() + "”" +
      (loadedCount() < total() ? " so far…" : ".") : "";
  }
  if (findForm && list) {
    let timer = 0;
    findForm.addEventListener("submit", function (e) {
      e.preventDefault();
      loadAll().then(function () { filter(findInput.value); });
    });
    findInput.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        if (findInput.value.trim()) loadAll();
        filter(findInput.value);
      }, 200);
    });
  }

  document.addEventListener("click", function (e) {
    const seg = e.target.closest && e.target.closest(".transcript [data-start]");
    if (seg && player) seek(parseFloat(seg.dataset.start), true);
    const copy = e.target.closest && e.target.closest("[data-copy]");
    if (copy) copyLink(copy);
    const cancel = e.target.closest && e.target.closest("[data-cancel]");
    if (cancel) post("/api/v1/jobs/" + cancel.dataset.cancel + "/cancel");
    const eject = e.target.closest && e.target.closest("[data-eject]");
    if (eject) post("/api/v1/devices/" + encodeURIComponent(eject.dataset.eject) + "/eject");
    const push = e.target.closest && e.target.closest("[data-push]");
    if (push) sendTo(push);
  });

  // Copy a share link: the clipboard where the browser allows it (https or localhost), else the text selected.
  function copyLink(btn) {
    const field = document.getElementById(btn.dataset.copy), text = field.textContent.trim();
    const done = function (said) { btn.textContent = said; setTimeout(function () { btn.textContent = "Copy"; }, 2500); };
    const range = document.createRange();
    range.selectNodeContents(field);
    const sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range);
    const fallback = function () { done(document.execCommand("copy") ? "Copied" : "Selected: copy it"); };
    if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).then(function () { done("Copied"); }, fallback);
    else fallback();
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
    const old = jobs.querySelector('tr[data-id="' + j.id + '"] td.meetings');
    const names = (j.results || []).map(function (r) { return r.title || "(untitled)"; });
    const meetings = old ? old.textContent : names.length ? names.slice(0, 3).join(", ") +
      (names.length > 3 ? " and " + (names.length - 3) + " more" : "") :
      j.sessions.length + (j.sessions.length === 1 ? " meeting" : " meetings");
    const tr = row(jobs, j.id, [String(j.id), j.operation, meetings, j.target, bar, j.state + (j.error ? ": " + j.error : ""),
      active ? button("Cancel", "cancel", j.id) : ""]);
    ["Job", "What", "Meetings", "Target", "Progress", "State", ""].forEach(function (label, i) {
      if (label) tr.children[i].dataset.label = label;
    });
    tr.children[2].className = "meetings"; tr.children[3].className = "target"; tr.children[5].className = "state";
  });
  es.addEventListener("job_removed", function (e) {
    const tr = jobs.querySelector('tr[data-id="' + JSON.parse(e.data).id + '"]'); if (tr) tr.remove();
  });
  es.addEventListener("device", function (e) {
    const d = JSON.parse(e.data);
    const tr = row(devices, d.id, [d.label || d.id, d.fs_type, humanSize(d.free),
      d.state + (d.error ? ": " + d.error : "") + (d.skip_reason ? " (not exported: " + d.skip_reason + ")" : ""), d.mount_point ? button("Eject", "eject", d.id) : ""]);
    tr.children[3].className = "state";
    ["", "Filesystem", "Free", "State"].forEach(function (label, i) { if (label) tr.children[i].dataset.label = label; });
  });
  function humanSize(n) {       // as web/human.size says it
    if (n < 1000) return n + (n === 1 ? " byte" : " bytes");
    const units = ["kB", "MB", "GB", "TB"];
    let v = n, i = -1;
    do { v /= 1000; i++; } while (v >= 999.5 && i < units.length - 1);
    return (v < 9.95 ? v.toFixed(1) : Math.round(v)) + " " + units[i];
  }
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
