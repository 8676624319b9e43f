/*
 * COSM web console: one page, hash routes, plain JavaScript (no build step, no framework,
 * no CDN). Served by the appliance at /ui/app.js under a strict Content-Security-Policy
 * (default-src 'self'): no inline scripts or styles, no inline event handlers, no eval.
 * Every element is built with the DOM API (never innerHTML with data), so names and
 * messages coming from machines cannot inject markup.
 *
 * The API contract is /work/shared-notes/console-contract.md. In short: the session is an
 * HttpOnly cookie; every fetch uses credentials "same-origin"; every non-GET request
 * carries X-CSRF-Token from the session body; any 401 sends the user to #/login with
 * "session expired, log in again". Read-scope sessions see no changing controls.
 *
 * Stable hooks for browser tests (data-testid unless noted; <mac> is the lowercase
 * colon form, e.g. 52:54:00:12:34:56; <role> a role name; <id> a token id):
 *
 *   layout     nav, nav-<route> (rack, deploy, images, vms, networks, alarms, tokens,
 *              settings), session-box, session-user, logout, status (live region), main,
 *              page-title (the h1 of each page), page-error (a page's load error)
 *   login      login-form, login-method-password, login-method-token (radios),
 *              login-secret (the password or token input), login-submit, login-error,
 *              login-expired ("session expired, log in again")
 *   setup      wizard, wizard-step (its data-step is network|os|roles|admin),
 *              wizard-error (the error summary, role=alert), wizard-back, wizard-next,
 *              wizard-apply, wizard-review (the review table; review-<path> per row),
 *              wizard-effective (effective settings with their source), wizard-done,
 *              roles-table, rule-error,
 *              field-<path> for each input, e.g. field-network.interface,
 *              field-network.subnet, field-network.appliance_ip, field-network.pool_start,
 *              field-network.pool_end, field-network.gateway, field-network.dns,
 *              field-network.mode, field-os.release, field-os.mirror_url,
 *              field-os.root_password_hash, field-os.ssh_keys, field-os.timezone,
 *              field-roles.<role>.min_cpus|min_memory_mib|min_disks|min_disk_gib,
 *              field-admin.password, field-admin.password_confirm;
 *              error-<path> next to each field (id err-<path with . as ->);
 *              rules-table, rule-row-<id>, rule-delete-<id>, rule-form, rule-role,
 *              rule-priority, rule-description, rule-mac-prefix, rule-min-cpus,
 *              rule-min-memory, rule-add
 *   rack       rack, rack-live (data-live="true" while the stream is connected),
 *              column-<role> and column-unassigned (data-role on each),
 *              card-<mac> (data-role = planned role or "", data-state, data-selected,
 *              data-planned="true" when moved in the plan), select-<mac> (checkbox),
 *              assign-<mac> (the accessible "Assign role" select: "" = unassigned),
 *              badge-<mac> (validation badge; data-ok="true|false"), details-<mac>,
 *              bulk-role + bulk-move (move the selection with the keyboard),
 *              clear-selection, plan-count, plan-review ("Review plan (n)"),
 *              plan-discard, plan-dialog, plan-row-<mac>, plan-apply, plan-cancel,
 *              plan-result, rack-empty
 *   deploy     deploy-table, deploy-row-<mac>, deploy-select-<mac>, deploy-selected,
 *              deploy-result, progress-<mac> (the role=progressbar element, with
 *              aria-valuenow), steps-<mac> (the step list), step-<mac>-<n> (data-state =
 *              done|active|pending|failed), failed-<mac>, failed-message-<mac>,
 *              logtail-<mac>
 *   machine    machine-detail, machine-inventory, machine-timeline, machine-power,
 *              power-state, power-on, power-off, power-cycle, power-pxe-once
 *   images     images-table, image-row-<name>, image-delete-<name>, upload-form,
 *              upload-file, upload-name, upload-submit, upload-progress (role=progressbar),
 *              upload-result
 *   tokens     tokens-table, token-row-<id>, token-revoke-<id>, token-form, token-name,
 *              token-scope, token-create, token-new (the new secret, shown once),
 *              token-new-dismiss
 *   others     vms-table, hosts-table, alarms-table, networks-table, ports-table,
 *              secgroups-table
 */
"use strict";

(() => {
  const API = "/api/v1";
  const ROLE_FIELDS = [
    ["min_cpus", "Minimum CPUs"],
    ["min_memory_mib", "Minimum memory (MiB)"],
    ["min_disks", "Minimum disks"],
    ["min_disk_gib", "Minimum disk size (GiB)"],
  ];
  const WIZARD_STEPS = [
    ["network", "Provisioning network"],
    ["os", "Operating system"],
    ["roles", "Roles"],
    ["admin", "Admin password and review"],
  ];

  /** What the console knows: the session, and what the current page must undo on leave. */
  const state = {
    session: null,
    expired: false,
    cleanup: [],
    wizard: null,
    rack: null,
    deploySelected: new Set(),
  };

  // ------------------------------------------------------------------ small helpers

  /** Builds an element: h("button", {type: "button", dataset: {...}, on: {click: f}}, ...children). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "on") {
        for (const [ev, f] of Object.entries(v)) el.addEventListener(ev, f);
      } else if (k === "dataset") {
        for (const [dk, dv] of Object.entries(v)) if (dv !== undefined && dv !== null) el.dataset[dk] = dv;
      } else if (k === "class") {
        el.className = v;
      } else if (k === "text") {
        el.textContent = v;
      } else if (k === "testid") {
        el.dataset.testid = v;
      } else if (k in el && typeof v !== "string") {
        el[k] = v;
      } else if (v === true) {
        el.setAttribute(k, "");
      } else {
        el.setAttribute(k, String(v));
      }
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  /** A safe id fragment from a path or MAC ("network.pool_start" -> "network-pool_start"). */
  function idPart(s) {
    return String(s).replace(/[^A-Za-z0-9_-]/g, "-");
  }

  function isAdmin() {
    return !!state.session && state.session.scope === "admin";
  }

  function fmtTime(t) {
    if (t === null || t === undefined || t === "") return "";
    const d = new Date(t);
    return isNaN(d.getTime()) ? String(t) : d.toLocaleString();
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return "";
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let v = Number(n);
    let u = 0;
    while (v >= 1024 && u + 1 < units.length) {
      v /= 1024;
      u += 1;
    }
    return u === 0 ? `${v} B` : `${v.toFixed(1)} ${units[u]}`;
  }

  function fmtMib(n) {
    return n === null || n === undefined ? "" : fmtBytes(Number(n) * 1024 * 1024);
  }

  function short(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  /** Says something in the live region (and to sighted users, for a while). */
  let statusTimer = null;
  function announce(text, kind) {
    const box = document.getElementById("status");
    box.textContent = text;
    box.dataset.kind = kind || "info";
    clearTimeout(statusTimer);
    if (text) statusTimer = setTimeout(() => { box.textContent = ""; }, 8000);
  }

  // ------------------------------------------------------------------ the API

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || `HTTP ${status}`);
      this.status = status;
      this.code = body && body.code;
      this.errors = (body && body.errors) || [];
    }
  }

  /** The session is gone: forget it and go to the login page with the message. */
  function sessionExpired() {
    const had = !!state.session;
    setSession(null);
    state.expired = true;
    if (had || location.hash !== "#/login") {
      location.hash = "#/login";
    }
  }

  function csrfHeaders(method) {
    const headers = {};
    if (method !== "GET" && method !== "HEAD" && state.session && state.session.csrf) {
      headers["X-CSRF-Token"] = state.session.csrf;
    }
    return headers;
  }

  /** One API request; JSON in and out. Throws ApiError; a 401 also goes to #/login. */
  async function api(method, path, body, opts) {
    const headers = Object.assign({ Accept: "application/json" }, csrfHeaders(method));
    const init = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path.startsWith("/") ? path : `${API}/${path}`, init);
    const text = await resp.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = { message: text }; }
    }
    if (resp.status === 401 && !(opts && opts.no401)) {
      sessionExpired();
      throw new ApiError(401, data);
    }
    if (!resp.ok) throw new ApiError(resp.status, data);
    return opts && opts.withLink ? { data, link: resp.headers.get("Link") } : data;
  }

  function nextLink(header) {
    if (!header) return null;
    for (const part of header.split(",")) {
      const m = part.match(/<([^>]+)>\s*;(.*)/);
      if (m && /rel="?next"?/.test(m[2])) return m[1];
    }
    return null;
  }

  /** Every record of a paged list (follows Link rel="next"). */
  async function listAll(path) {
    let all = [];
    let next = path.startsWith("/") ? path : `${API}/${path}`;
    for (let i = 0; next && i < 1000; i++) {
      const { data, link } = await api("GET", next, undefined, { withLink: true });
      all = all.concat(Array.isArray(data) ? data : []);
      next = nextLink(link);
    }
    return all;
  }

  async function loadSession() {
    try {
      setSession(await api("GET", `${API}/session`, undefined, { no401: true }));
    } catch (e) {
      if (e.status !== 401) throw e;
      setSession(null);
    }
    return state.session;
  }

  /** Keeps the session, and checks it again when it is due to expire. */
  let expiryTimer = null;
  function setSession(s) {
    state.session = s;
    clearTimeout(expiryTimer);
    if (s && s.expires_at) {
      const wait = Math.min(Math.max(Number(s.expires_at) - Date.now() + 1000, 1000), 0x7fffffff);
      expiryTimer = setTimeout(async () => {
        const again = await loadSession().catch(() => state.session);
        if (!again) sessionExpired();
      }, wait);
    }
  }

  // ------------------------------------------------------------------ layout and routes

  function setChrome() {
    const nav = document.getElementById("nav");
    const box = document.getElementById("session-box");
    const logged = !!state.session;
    nav.hidden = !logged;
    box.hidden = !logged;
    for (const li of nav.querySelectorAll("[data-admin-only]")) li.hidden = !isAdmin();
    if (logged) {
      document.getElementById("session-user").textContent =
        `${state.session.user} (${state.session.scope === "admin" ? "admin" : "read only"})`;
    }
    const route = currentRoute().name;
    for (const a of nav.querySelectorAll("a[data-route]")) {
      if (a.dataset.route === route) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
  }

  function currentRoute() {
    const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
    return { name: parts[0] || "rack", args: parts.slice(1) };
  }

  /** Replaces the page: its title, then its content; returns the content container. */
  function page(title, ...content) {
    const main = document.getElementById("main");
    main.replaceChildren(h("h1", { testid: "page-title" }, title), ...content.filter((c) => c !== null && c !== undefined && c !== false));
    document.title = `${title} · COSM`;
    return main;
  }

  function pageError(e) {
    return h("p", { class: "error", role: "alert", testid: "page-error" }, `Could not load: ${e.message}`);
  }

  function leavePage() {
    for (const f of state.cleanup.splice(0)) {
      try { f(); } catch (_) { /* a page's cleanup must not stop the next page */ }
    }
  }

  const ROUTES = {
    login: renderLogin,
    setup: renderSetup,
    rack: renderRack,
    deploy: renderDeploy,
    machines: renderMachine,
    images: renderImages,
    tokens: renderTokens,
    vms: renderVms,
    alarms: renderAlarms,
    networks: renderNetworks,
  };

  let routing = 0;
  async function route() {
    const ticket = ++routing;
    leavePage();
    const r = currentRoute();
    if (r.name !== "login" && !state.session) {
      try {
        await loadSession();
      } catch (e) {
        page("COSM", pageError(e));
        return;
      }
      if (ticket !== routing) return;
      if (!state.session) {
        location.hash = "#/login";
        return;
      }
    }
    if (state.session && r.name !== "setup" && r.name !== "login" && isAdmin() && !state.session.setup_complete) {
      location.hash = "#/setup";
      return;
    }
    setChrome();
    const render = ROUTES[r.name];
    if (!render) {
      page("Not found", h("p", {}, "No such page. ", h("a", { href: "#/rack" }, "Go to the rack.")));
      return;
    }
    try {
      await render(...r.args);
    } catch (e) {
      if (e.status !== 401) page("Error", pageError(e));
    }
    // Move focus to the page for keyboard and screen-reader users, unless a control of
    // the page took it already.
    const main = document.getElementById("main");
    if (ticket === routing && !main.contains(document.activeElement)) main.focus({ preventScroll: true });
  }

  // ------------------------------------------------------------------ login

  async function renderLogin() {
    if (!state.expired && !state.session) {
      // Already logged in (a reload of #/login)? Then go on.
      try { await loadSession(); } catch (_) { /* shown by the form on submit */ }
      if (state.session) {
        location.hash = state.session.setup_complete || !isAdmin() ? "#/rack" : "#/setup";
        return;
      }
    }
    setChrome();
    const secret = h("input", {
      id: "login-secret", name: "secret", type: "password", autocomplete: "current-password",
      required: true, testid: "login-secret",
    });
    const secretLabel = h("label", { for: "login-secret" }, "Password");
    const method = (value, label, checked) => h("label", { class: "inline" },
      h("input", {
        type: "radio", name: "method", value, checked, testid: `login-method-${value}`,
        on: {
          change: () => {
            secretLabel.textContent = value === "password" ? "Password" : "Admin token";
            secret.autocomplete = value === "password" ? "current-password" : "off";
            secret.focus();
          },
        },
      }), ` ${label}`);
    const error = h("p", { class: "error", id: "login-error", role: "alert", testid: "login-error", hidden: true });
    const submit = h("button", { type: "submit", testid: "login-submit" }, "Log in");
    const form = h("form", { class: "card narrow", testid: "login-form", novalidate: true },
      state.expired ? h("p", { class: "notice", role: "alert", testid: "login-expired" }, "Session expired, log in again.") : null,
      h("fieldset", {},
        h("legend", {}, "Log in with"),
        method("password", "Admin password", true),
        method("token", "Admin API token", false)),
      h("div", { class: "field" }, secretLabel, secret),
      error,
      h("div", { class: "actions" }, submit));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      error.hidden = true;
      const value = secret.value.trim();
      if (!value) {
        error.textContent = "Enter the password or the token.";
        error.hidden = false;
        secret.setAttribute("aria-invalid", "true");
        secret.focus();
        return;
      }
      const byToken = form.querySelector("input[name=method]:checked").value === "token";
      submit.disabled = true;
      try {
        setSession(await api("POST", `${API}/login`, byToken ? { token: value } : { password: value }, { no401: true }));
        state.expired = false;
        location.hash = state.session.setup_complete || !isAdmin() ? "#/rack" : "#/setup";
      } catch (e) {
        error.textContent = e.status === 401 ? "Wrong password or token." : `Cannot log in: ${e.message}`;
        error.hidden = false;
        secret.setAttribute("aria-invalid", "true");
        secret.select();
      } finally {
        submit.disabled = false;
      }
    });
    page("Log in to COSM", form);
    secret.focus();
  }

  async function logout() {
    try {
      await api("DELETE", `${API}/session`, undefined, { no401: true });
    } catch (_) { /* gone either way */ }
    setSession(null);
    state.expired = false;
    location.hash = "#/login";
  }

  // ------------------------------------------------------------------ setup wizard

  function emptySettings() {
    const role = () => ({ min_cpus: 1, min_memory_mib: 1024, min_disks: 1, min_disk_gib: 10 });
    return {
      network: { interface: "", subnet: "", appliance_ip: "", pool_start: "", pool_end: "", gateway: "", dns: [], mode: "authoritative" },
      os: { release: "", mirror_url: "", root_password_hash: "", ssh_keys: [], timezone: "UTC" },
      roles: { center: role(), web: role(), host: role(), storage: role() },
    };
  }

  /** Settings from the API, with every section and field the wizard edits present. */
  function normalizeSettings(s) {
    const base = emptySettings();
    s = s || {};
    const out = {
      network: Object.assign(base.network, s.network || {}),
      os: Object.assign(base.os, s.os || {}),
      roles: {},
    };
    const roles = s.roles && Object.keys(s.roles).length ? s.roles : base.roles;
    for (const [name, req] of Object.entries(roles)) {
      out.roles[name] = Object.assign({ min_cpus: 1, min_memory_mib: 1024, min_disks: 1, min_disk_gib: 10 }, req || {});
    }
    if (!Array.isArray(out.network.dns)) out.network.dns = out.network.dns ? [String(out.network.dns)] : [];
    if (!Array.isArray(out.os.ssh_keys)) out.os.ssh_keys = out.os.ssh_keys ? [String(out.os.ssh_keys)] : [];
    return out;
  }

  function getPath(obj, path) {
    return path.split(".").reduce((o, k) => (o === null || o === undefined ? undefined : o[k]), obj);
  }

  function setPath(obj, path, value) {
    const keys = path.split(".");
    const last = keys.pop();
    let o = obj;
    for (const k of keys) {
      if (o[k] === null || typeof o[k] !== "object") o[k] = {};
      o = o[k];
    }
    o[last] = value;
  }

  /** "192.0.2.1/24" -> "192.0.2.0/24" */
  function networkOf(cidr) {
    const m = /^(\d+)\.(\d+)\.(\d+)\.(\d+)\/(\d+)$/.exec(cidr || "");
    if (!m) return "";
    const prefix = Number(m[5]);
    const ip = ((Number(m[1]) << 24) >>> 0) + (Number(m[2]) << 16) + (Number(m[3]) << 8) + Number(m[4]);
    const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
    const net = (ip & mask) >>> 0;
    return `${net >>> 24}.${(net >>> 16) & 255}.${(net >>> 8) & 255}.${net & 255}/${prefix}`;
  }

  async function renderSetup() {
    if (!isAdmin()) {
      page("Settings", h("p", {}, "Only an admin session can change the settings."));
      return;
    }
    page("Setup", h("p", {}, "Loading settings…"));
    const [loaded, rules] = await Promise.all([api("GET", `${API}/settings`), listAll("rules").catch(() => [])]);
    state.wizard = {
      step: 0,
      settings: normalizeSettings(loaded.settings),
      effective: loaded.effective || [],
      interfaces: loaded.interfaces || [],
      releases: loaded.releases || [],
      rules,
      errors: [],
      password: "",
      passwordConfirm: "",
    };
    drawWizard();
  }

  /** A labelled input bound to a settings path; its error goes next to it. */
  function field(path, label, opts) {
    opts = opts || {};
    const w = state.wizard;
    const id = `f-${idPart(path)}`;
    const errId = `err-${idPart(path)}`;
    let input;
    const current = opts.get ? opts.get() : getPath(w.settings, path);
    const onChange = (v) => { if (opts.set) opts.set(v); else setPath(w.settings, path, v); };
    if (opts.options) {
      input = h("select", { id, name: path, testid: `field-${path}` },
        opts.options.map(([v, t]) => h("option", { value: v, selected: String(current) === String(v) }, t)));
      input.addEventListener("change", () => { onChange(input.value); if (opts.after) opts.after(input.value); });
    } else if (opts.multiline) {
      input = h("textarea", { id, name: path, rows: 3, testid: `field-${path}`, spellcheck: "false" });
      input.value = current === undefined || current === null ? "" : current;
      input.addEventListener("input", () => onChange(input.value));
    } else {
      input = h("input", {
        id, name: path, type: opts.type || "text", testid: `field-${path}`,
        autocomplete: opts.autocomplete || "off", spellcheck: "false",
        inputmode: opts.inputmode, placeholder: opts.placeholder, min: opts.min,
      });
      input.value = current === undefined || current === null ? "" : current;
      input.addEventListener("input", () => {
        onChange(opts.type === "number" ? (input.value === "" ? null : Number(input.value)) : input.value);
      });
    }
    const err = w.errors.find((e) => e.field === path);
    const hint = opts.hint ? h("span", { class: "hint", id: `hint-${idPart(path)}` }, opts.hint) : null;
    const describedBy = [hint ? `hint-${idPart(path)}` : null, err ? errId : null].filter(Boolean).join(" ");
    if (describedBy) input.setAttribute("aria-describedby", describedBy);
    if (err) input.setAttribute("aria-invalid", "true");
    return h("div", { class: `field${err ? " invalid" : ""}` },
      h("label", { for: id, class: opts.hideLabel ? "visually-hidden" : null }, label),
      input,
      hint,
      err ? h("span", { class: "field-error", id: errId, testid: `error-${path}` }, err.message) : null);
  }

  function errorSummary(errors, message) {
    if (!errors.length && !message) return null;
    const list = errors.length
      ? h("ul", {}, errors.map((e) => h("li", {},
          h("a", { href: `#f-${idPart(e.field)}`, on: { click: (ev) => { ev.preventDefault(); const f = document.getElementById(`f-${idPart(e.field)}`); if (f) f.focus(); } } },
            `${e.field}: ${e.message}`))))
      : null;
    return h("div", { class: "error-summary", role: "alert", tabindex: "-1", testid: "wizard-error" },
      h("h2", {}, errors.length === 1 ? "There is a problem" : errors.length ? `There are ${errors.length} problems` : "There is a problem"),
      message && !errors.length ? h("p", {}, message) : null,
      list);
  }

  function drawWizard(focusSummary) {
    const w = state.wizard;
    const [stepName, stepTitle] = WIZARD_STEPS[w.step];
    const steps = h("ol", { class: "stepper", "aria-label": "Setup steps" },
      WIZARD_STEPS.map(([name, title], i) => h("li", {
        class: i === w.step ? "current" : i < w.step ? "done" : "",
        "aria-current": i === w.step ? "step" : null,
      }, `${i + 1}. ${title}`)));
    let body;
    if (stepName === "network") body = wizardNetwork();
    else if (stepName === "os") body = wizardOs();
    else if (stepName === "roles") body = wizardRoles();
    else body = wizardAdmin();
    const back = w.step > 0 ? h("button", { type: "button", class: "secondary", testid: "wizard-back", on: { click: () => { w.errors = []; w.message = null; w.step -= 1; drawWizard(); } } }, "Back") : null;
    const next = stepName !== "admin"
      ? h("button", { type: "submit", testid: "wizard-next" }, "Next")
      : h("button", { type: "submit", testid: "wizard-apply" }, "Apply");
    const form = h("form", { class: "card wizard", testid: "wizard", novalidate: true },
      h("div", { testid: "wizard-step", dataset: { step: stepName } },
        h("h2", {}, `Step ${w.step + 1} of ${WIZARD_STEPS.length}: ${stepTitle}`),
        errorSummary(w.errors, w.message),
        body),
      h("div", { class: "actions" }, back, next));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      if (stepName === "admin") wizardApply(next);
      else wizardNext(stepName, next);
    });
    page(state.session.setup_complete ? "Settings" : "First-run setup", steps, form);
    if (focusSummary) {
      const s = document.querySelector("[data-testid=wizard-error]");
      if (s) s.focus();
    }
  }

  async function wizardNext(stepName, button) {
    const w = state.wizard;
    button.disabled = true;
    try {
      await api("POST", `${API}/settings/validate`, { step: stepName, settings: w.settings });
      w.errors = [];
      w.message = null;
      w.step += 1;
      drawWizard();
    } catch (e) {
      if (e.status === 401) return;
      w.errors = e.errors || [];
      w.message = e.message;
      drawWizard(true);
    } finally {
      button.disabled = false;
    }
  }

  function wizardNetwork() {
    const w = state.wizard;
    const n = w.settings.network;
    const ifaces = w.interfaces.map((i) => [i.name, `${i.name}${i.addresses && i.addresses.length ? ` (${i.addresses.join(", ")})` : ""}`]);
    if (n.interface && !ifaces.some(([v]) => v === n.interface)) ifaces.unshift([n.interface, n.interface]);
    ifaces.unshift(["", "Choose an interface"]);
    const fillFrom = (name) => {
      const iface = w.interfaces.find((i) => i.name === name);
      const addr = iface && (iface.addresses || []).find((a) => /^\d+\.\d+\.\d+\.\d+\/\d+$/.test(a));
      if (!addr) return;
      n.appliance_ip = addr.split("/")[0];
      if (!n.subnet) n.subnet = networkOf(addr);
      if (!n.gateway) n.gateway = n.appliance_ip;
      if (!n.dns.length) n.dns = [n.appliance_ip];
      drawWizard();
      const sel = document.getElementById("f-network-interface");
      if (sel) sel.focus();
    };
    return h("div", { class: "grid2" },
      field("network.interface", "Interface", { options: ifaces, after: fillFrom, hint: "The NIC on the provisioning network; its address fills the appliance's." }),
      field("network.mode", "DHCP mode", {
        options: [["authoritative", "Authoritative (COSM is the DHCP server)"], ["proxy", "Proxy (beside the site's DHCP server)"], ["off", "Off"]],
      }),
      field("network.subnet", "Subnet (CIDR)", { placeholder: "192.0.2.0/24" }),
      field("network.appliance_ip", "Appliance address", { placeholder: "192.0.2.1" }),
      field("network.pool_start", "Pool start", { placeholder: "192.0.2.100" }),
      field("network.pool_end", "Pool end", { placeholder: "192.0.2.200" }),
      field("network.gateway", "Gateway", { placeholder: "192.0.2.1" }),
      field("network.dns", "DNS servers", {
        hint: "Comma-separated.",
        get: () => n.dns.join(", "),
        set: (v) => { n.dns = v.split(/[\s,]+/).filter(Boolean); },
      }));
  }

  function wizardOs() {
    const w = state.wizard;
    const o = w.settings.os;
    const releases = w.releases.map((r) => [r, r]);
    if (o.release && !w.releases.includes(o.release)) releases.unshift([o.release, o.release]);
    if (!o.release) releases.unshift(["", "Choose a release"]);
    return h("div", { class: "grid2" },
      field("os.release", "Release", { options: releases }),
      field("os.timezone", "Time zone", { placeholder: "UTC" }),
      field("os.mirror_url", "Install mirror URL", { type: "url", placeholder: "http://mirror.example/rocky/9/" }),
      field("os.root_password_hash", "Root password hash", { hint: "A crypt(3) hash (openssl passwd -6); empty locks root." }),
      h("div", { class: "span2" },
        field("os.ssh_keys", "SSH public keys for root", {
          multiline: true,
          hint: "One key per line.",
          get: () => o.ssh_keys.join("\n"),
          set: (v) => { o.ssh_keys = v.split("\n").map((s) => s.trim()).filter(Boolean); },
        })));
  }

  function wizardRoles() {
    const w = state.wizard;
    const roles = Object.keys(w.settings.roles);
    const table = h("table", { class: "data", testid: "roles-table" },
      h("caption", {}, "Requirements a machine must meet for each role"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Role"), ROLE_FIELDS.map(([, t]) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, roles.map((role) => h("tr", {},
        h("th", { scope: "row" }, role),
        ROLE_FIELDS.map(([k, t]) => h("td", {}, field(`roles.${role}.${k}`, `${role}: ${t}`, { type: "number", min: "0", inputmode: "numeric", hideLabel: true })))))));
    return h("div", {}, table, rulesEditor());
  }

  /** The role rules (existing API): a list with delete buttons and a form to add one. */
  function rulesEditor() {
    const w = state.wizard;
    const roles = Object.keys(w.settings.roles);
    const msg = h("p", { class: "error", role: "alert", hidden: true, testid: "rule-error" });
    const refresh = async () => {
      w.rules = await listAll("rules");
      drawWizard();
    };
    const rows = w.rules.map((r) => h("tr", { testid: `rule-row-${r.id}` },
      h("td", {}, String(r.priority)),
      h("td", {}, r.role),
      h("td", {}, Object.entries(r.match || {}).map(([k, v]) => `${k}=${v}`).join(", ") || "any machine"),
      h("td", {}, r.description || ""),
      h("td", {}, h("button", {
        type: "button", class: "secondary small", testid: `rule-delete-${r.id}`, "aria-label": `Delete rule ${r.id} (${r.role})`,
        on: { click: async () => { try { await api("DELETE", `${API}/rules/${r.id}`); await refresh(); } catch (e) { msg.textContent = e.message; msg.hidden = false; } } },
      }, "Delete"))));
    const input = (id, label, attrs) => h("div", { class: "field" }, h("label", { for: id }, label), h("input", Object.assign({ id, testid: id, autocomplete: "off" }, attrs || {})));
    const form = h("div", { class: "rule-form", testid: "rule-form", role: "group", "aria-label": "Add a role rule" },
      h("div", { class: "field" }, h("label", { for: "rule-role" }, "Role"),
        h("select", { id: "rule-role", testid: "rule-role" }, roles.map((r) => h("option", { value: r }, r)))),
      input("rule-priority", "Priority", { type: "number", value: "100", inputmode: "numeric" }),
      input("rule-mac-prefix", "MAC prefix", { placeholder: "52:54:00" }),
      input("rule-min-cpus", "Min CPUs", { type: "number", min: "0" }),
      input("rule-min-memory", "Min memory (MiB)", { type: "number", min: "0" }),
      input("rule-description", "Description", {}),
      h("div", { class: "actions" }, h("button", {
        type: "button", testid: "rule-add",
        on: {
          click: async () => {
            const v = (id) => document.getElementById(id).value.trim();
            const match = {};
            if (v("rule-mac-prefix")) match.mac_prefix = v("rule-mac-prefix");
            if (v("rule-min-cpus")) match.min_cpus = Number(v("rule-min-cpus"));
            if (v("rule-min-memory")) match.min_memory_mib = Number(v("rule-min-memory"));
            try {
              await api("POST", `${API}/rules`, { role: v("rule-role"), priority: Number(v("rule-priority") || 100), description: v("rule-description"), match });
              await refresh();
              announce("Rule added.");
            } catch (e) {
              msg.textContent = `Cannot add the rule: ${e.message}`;
              msg.hidden = false;
            }
          },
        },
      }, "Add rule")));
    return h("section", { class: "rules", "aria-labelledby": "rules-heading" },
      h("h3", { id: "rules-heading" }, "Role rules"),
      h("p", { class: "hint" }, "A machine that boots is given the role of the first rule it matches (lowest priority first). Rules apply at once."),
      w.rules.length
        ? h("table", { class: "data", testid: "rules-table" },
            h("thead", {}, h("tr", {}, ["Priority", "Role", "Match", "Description", ""].map((t) => h("th", { scope: "col" }, t)))),
            h("tbody", {}, rows))
        : h("p", { testid: "rules-table" }, "No rules yet."),
      msg,
      form);
  }

  /** Every value of the settings as [path, value] rows, for the review table. */
  function flatten(obj, prefix, out) {
    out = out || [];
    for (const [k, v] of Object.entries(obj)) {
      const path = prefix ? `${prefix}.${k}` : k;
      if (v !== null && typeof v === "object" && !Array.isArray(v)) flatten(v, path, out);
      else out.push([path, Array.isArray(v) ? v.join(", ") : v === null || v === undefined ? "" : String(v)]);
    }
    return out;
  }

  function wizardAdmin() {
    const w = state.wizard;
    const optional = state.session.password_set;
    const pw = field("admin.password", optional ? "New admin password (optional: one is set)" : "Admin password", {
      type: "password", autocomplete: "new-password", hint: "At least 12 characters.",
      get: () => w.password, set: (v) => { w.password = v; },
    });
    const pw2 = field("admin.password_confirm", "Repeat the password", {
      type: "password", autocomplete: "new-password",
      get: () => w.passwordConfirm, set: (v) => { w.passwordConfirm = v; },
    });
    const rows = flatten(w.settings).map(([path, value]) => h("tr", { testid: `review-${path}` },
      h("th", { scope: "row" }, path),
      h("td", { class: "mono" }, path === "os.root_password_hash" && value ? "(set)" : value || "—")));
    return h("div", {},
      h("div", { class: "grid2" }, pw, pw2),
      h("h3", {}, "Review"),
      h("table", { class: "data review", testid: "wizard-review" },
        h("caption", {}, "Every setting that Apply saves"),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Setting"), h("th", { scope: "col" }, "Value"))),
        h("tbody", {}, rows)),
      w.effective.length ? h("details", { class: "effective" },
        h("summary", {}, "Settings in effect now, and where each comes from"),
        h("table", { class: "data", testid: "wizard-effective" },
          h("thead", {}, h("tr", {}, ["Key", "Value", "Source"].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", {}, w.effective.map((e) => h("tr", {}, h("td", { class: "mono" }, e.key), h("td", { class: "mono" }, short(e.value)), h("td", {}, e.source)))))) : null);
  }

  async function wizardApply(button) {
    const w = state.wizard;
    const errors = [];
    if (!state.session.password_set && !w.password) errors.push({ field: "admin.password", message: "set an admin password" });
    if (w.password && w.password.length < 12) errors.push({ field: "admin.password", message: "the password must have at least 12 characters" });
    if (w.password && w.password !== w.passwordConfirm) errors.push({ field: "admin.password_confirm", message: "the two passwords differ" });
    if (errors.length) {
      w.errors = errors;
      drawWizard(true);
      return;
    }
    button.disabled = true;
    try {
      await api("POST", `${API}/settings/validate`, { step: "all", settings: w.settings });
      if (w.password) await api("PUT", `${API}/admin/password`, { password: w.password });
      w.password = "";
      w.passwordConfirm = "";
      const saved = await api("PUT", `${API}/settings`, w.settings);
      w.settings = normalizeSettings(saved && saved.settings ? saved.settings : w.settings);
      w.effective = (saved && saved.effective) || w.effective;
      w.errors = [];
      w.message = null;
      await loadSession();
      setChrome();
      page("Setup complete",
        h("div", { class: "card narrow", testid: "wizard-done", role: "status" },
          h("p", {}, "The settings are saved and in effect: DHCP has reloaded, boot and install settings apply at each machine's next boot."),
          h("p", {}, h("a", { href: "#/rack", class: "button" }, "Go to the rack"))));
      announce("Settings applied.");
    } catch (e) {
      if (e.status === 401) return;
      w.errors = e.errors || [];
      w.message = e.message;
      // An error about a field of an earlier step: go to that step.
      const first = w.errors[0] && w.errors[0].field.split(".")[0];
      const idx = WIZARD_STEPS.findIndex(([n]) => n === first);
      if (idx >= 0) w.step = idx;
      drawWizard(true);
    } finally {
      button.disabled = false;
    }
  }

  // ------------------------------------------------------------------ the rack stream

  /**
   * Subscribes to /api/v1/rack/stream for the current page; `onRack` gets each snapshot.
   * EventSource reconnects by itself; when it gives up (the server refused, e.g. 401)
   * the session is checked, which sends an expired one to the login page.
   */
  function subscribeRack(onRack, onLive) {
    let es = null;
    let closed = false;
    let retry = null;
    const open = () => {
      es = new EventSource(`${API}/rack/stream`, { withCredentials: true });
      es.addEventListener("open", () => onLive(true));
      es.addEventListener("rack", (ev) => {
        onLive(true);
        try { onRack(JSON.parse(ev.data)); } catch (e) { announce(`Bad rack update: ${e.message}`, "error"); }
      });
      es.addEventListener("error", async () => {
        onLive(false);
        if (es.readyState === EventSource.CLOSED && !closed) {
          es.close();
          const s = await loadSession().catch(() => state.session);
          if (!s) { sessionExpired(); return; }
          retry = setTimeout(() => { if (!closed) open(); }, 3000);
        }
      });
    };
    open();
    state.cleanup.push(() => { closed = true; clearTimeout(retry); if (es) es.close(); });
  }

  // ------------------------------------------------------------------ the rack (DragonDrop)

  async function renderRack() {
    const rk = {
      machines: new Map(),
      order: [],
      roles: ["center", "web", "host", "storage"],
      plan: new Map(),
      selected: new Set(),
      live: false,
      drag: null,
      dirty: false,
      loaded: false,
    };
    state.rack = rk;
    const live = h("span", { class: "live", testid: "rack-live", dataset: { live: "false" } }, "connecting…");
    const board = h("div", { class: "board", id: "board", testid: "rack" });
    const toolbar = h("div", { class: "toolbar", id: "rack-toolbar" });
    page("Rack", h("div", { class: "page-head" }, h("p", { class: "hint" },
      isAdmin() ? "Drag machines onto a role (ctrl-click or tick several to move them together), or use each card's “Assign role”. Moves make a plan; review it, then apply." : "Read-only session: roles cannot be changed here."), live),
    toolbar, board, h("p", { class: "hint", id: "rack-empty-slot" }));
    subscribeRack((msg) => {
      rk.loaded = true;
      if (Array.isArray(msg.roles) && msg.roles.length) rk.roles = msg.roles;
      rk.machines = new Map((msg.machines || []).map((m) => [m.mac, m]));
      rk.order = (msg.machines || []).map((m) => m.mac);
      for (const mac of [...rk.selected]) if (!rk.machines.has(mac)) rk.selected.delete(mac);
      for (const [mac, role] of [...rk.plan]) {
        const m = rk.machines.get(mac);
        if (!m || (m.role || null) === role) rk.plan.delete(mac);
      }
      drawRack();
    }, (on) => {
      if (rk.live === on) return;
      rk.live = on;
      live.dataset.live = on ? "true" : "false";
      live.textContent = on ? "● live" : "reconnecting…";
    });
    state.cleanup.push(() => { if (rk.drag) endDrag(null); state.rack = null; });
    drawRack();
  }

  function plannedRole(rk, m) {
    return rk.plan.has(m.mac) ? rk.plan.get(m.mac) : m.role || null;
  }

  function drawRack() {
    const rk = state.rack;
    if (!rk) return;
    if (rk.drag) { rk.dirty = true; return; } // redrawn on drop; the dragged card must stay
    const board = document.getElementById("board");
    if (!board) return;
    const focusedTestid = document.activeElement && board.contains(document.activeElement) ? document.activeElement.dataset.testid : null;
    const columns = [null, ...rk.roles];
    board.replaceChildren(...columns.map((role) => {
      const macs = rk.order.filter((mac) => plannedRole(rk, rk.machines.get(mac)) === role);
      const name = role || "unassigned";
      return h("section", {
        class: "column", testid: `column-${name}`, dataset: { role: role || "", dropRole: name },
        "aria-labelledby": `col-h-${name}`,
      },
      h("h2", { id: `col-h-${name}` }, role ? role : "Unassigned", h("span", { class: "count" }, ` (${macs.length})`)),
      h("ul", { class: "cards" }, macs.map((mac) => h("li", {}, drawCard(rk, rk.machines.get(mac), null)))));
    }));
    drawRackToolbar();
    const empty = document.getElementById("rack-empty-slot");
    if (empty) {
      empty.replaceChildren(rk.loaded && rk.order.length === 0
        ? h("span", { testid: "rack-empty" }, "No machines yet. Power a machine on to network-boot it: it appears here as it boots.")
        : "");
    }
    if (focusedTestid) {
      const el = board.querySelector(`[data-testid="${CSS.escape(focusedTestid)}"]`);
      if (el) el.focus();
    }
  }

  /** The validation badge of a machine for `role` (the planned role unless previewing). */
  function badge(m, role) {
    if (!role) return h("span", { class: "badge neutral", testid: `badge-${m.mac}` }, "no role");
    const v = m.validations && m.validations[role];
    if (!v) return h("span", { class: "badge neutral", testid: `badge-${m.mac}` }, `${role}: not checked`);
    if (v.ok) return h("span", { class: "badge ok", testid: `badge-${m.mac}`, dataset: { ok: "true" } }, `✓ fits ${role}`);
    return h("span", { class: "badge bad", testid: `badge-${m.mac}`, dataset: { ok: "false" }, title: v.failures.join("; ") },
      `✗ ${role}: ${v.failures.join("; ") || "does not fit"}`);
  }

  function drawCard(rk, m, previewRole) {
    const role = plannedRole(rk, m);
    const selected = rk.selected.has(m.mac);
    const planned = rk.plan.has(m.mac);
    const name = m.hostname || m.mac;
    const admin = isAdmin();
    const disks = (m.disks || []).map((d) => `${d.name} ${fmtBytes(d.size_bytes)}`).join(", ");
    const card = h("article", {
      class: `machine${selected ? " selected" : ""}${planned ? " planned" : ""}`,
      testid: `card-${m.mac}`,
      tabindex: "0",
      "aria-label": `${name}, ${m.state}${role ? `, role ${role}` : ", no role"}${selected ? ", selected" : ""}`,
      dataset: { mac: m.mac, role: role || "", state: m.state, selected: selected ? "true" : "false", planned: planned ? "true" : null },
    },
    h("div", { class: "card-head" },
      admin ? h("input", {
        type: "checkbox", id: `sel-${idPart(m.mac)}`, testid: `select-${m.mac}`, checked: selected,
        "aria-label": `Select ${name}`,
        on: { change: (ev) => { if (ev.target.checked) rk.selected.add(m.mac); else rk.selected.delete(m.mac); drawRack(); } },
      }) : null,
      h("strong", { class: "name" }, name),
      h("span", { class: `state state-${m.state}` }, m.state)),
    m.hostname ? h("div", { class: "mono small" }, m.mac) : null,
    h("dl", { class: "facts" },
      h("dt", {}, "IP"), h("dd", {}, m.ip || "—"),
      h("dt", {}, "Firmware"), h("dd", {}, m.firmware ? m.firmware.toUpperCase() : "—"),
      h("dt", {}, "CPUs"), h("dd", {}, m.cpus === null || m.cpus === undefined ? "—" : String(m.cpus)),
      h("dt", {}, "Memory"), h("dd", {}, m.memory_mib ? fmtMib(m.memory_mib) : "—"),
      h("dt", {}, "Disks"), h("dd", {}, disks || "—")),
    planned ? h("div", { class: "plan-note" }, `planned: ${m.role || "unassigned"} → ${role || "unassigned"}`) : null,
    badge(m, previewRole !== null && previewRole !== undefined ? previewRole : role),
    h("div", { class: "card-foot" },
      admin ? h("label", { class: "assign", for: `assign-${idPart(m.mac)}` }, "Assign role",
        h("select", {
          id: `assign-${idPart(m.mac)}`, testid: `assign-${m.mac}`,
          on: { change: (ev) => planMove([m.mac], ev.target.value || null) },
        },
        h("option", { value: "", selected: !role }, "Unassigned"),
        rk.roles.map((r) => h("option", { value: r, selected: role === r }, r)))) : null,
      h("a", { href: `#/machines/${encodeURIComponent(m.mac)}`, testid: `details-${m.mac}`, "aria-label": `Details of ${name}` }, "Details")));
    if (admin) {
      card.addEventListener("pointerdown", onCardPointerDown);
      card.addEventListener("keydown", (ev) => {
        if ((ev.key === " " || ev.key === "Enter") && ev.target === card) {
          ev.preventDefault();
          toggleSelect(m.mac, true);
        }
      });
    }
    return card;
  }

  function toggleSelect(mac, additive) {
    const rk = state.rack;
    if (additive) {
      if (rk.selected.has(mac)) rk.selected.delete(mac);
      else rk.selected.add(mac);
    } else if (rk.selected.size === 1 && rk.selected.has(mac)) {
      rk.selected.clear();
    } else {
      rk.selected = new Set([mac]);
    }
    drawRack();
  }

  /** Moves machines to `role` (null: unassigned) in the plan; a move back to the stored role drops the entry. */
  function planMove(macs, role) {
    const rk = state.rack;
    let n = 0;
    for (const mac of macs) {
      const m = rk.machines.get(mac);
      if (!m) continue;
      if ((m.role || null) === role) rk.plan.delete(mac);
      else rk.plan.set(mac, role);
      n += 1;
    }
    drawRack();
    announce(`${n} machine${n === 1 ? "" : "s"} moved to ${role || "unassigned"} in the plan (${rk.plan.size} change${rk.plan.size === 1 ? "" : "s"} to review).`);
  }

  function drawRackToolbar() {
    const rk = state.rack;
    const bar = document.getElementById("rack-toolbar");
    if (!bar) return;
    if (!isAdmin()) { bar.replaceChildren(); return; }
    const bulk = h("select", { id: "bulk-role", testid: "bulk-role" },
      h("option", { value: "" }, "Unassigned"), rk.roles.map((r) => h("option", { value: r }, r)));
    bar.replaceChildren(
      h("span", { testid: "selection-count" }, `${rk.selected.size} selected`),
      h("label", { for: "bulk-role" }, "Move selected to"),
      bulk,
      h("button", { type: "button", class: "secondary", testid: "bulk-move", disabled: rk.selected.size === 0, on: { click: () => planMove([...rk.selected], bulk.value || null) } }, "Move"),
      h("button", { type: "button", class: "secondary", testid: "clear-selection", disabled: rk.selected.size === 0, on: { click: () => { rk.selected.clear(); drawRack(); } } }, "Clear selection"),
      h("span", { class: "spacer" }),
      h("span", { testid: "plan-count", class: "plan-count" }, rk.plan.size ? `${rk.plan.size} planned change${rk.plan.size === 1 ? "" : "s"}` : "No planned changes"),
      h("button", { type: "button", testid: "plan-review", disabled: rk.plan.size === 0, on: { click: openPlanDialog } }, `Review plan (${rk.plan.size})`),
      h("button", { type: "button", class: "secondary", testid: "plan-discard", disabled: rk.plan.size === 0, on: { click: () => { rk.plan.clear(); drawRack(); announce("Plan discarded."); } } }, "Discard"));
  }

  // Pointer-event drag and drop (not the HTML5 drag API, which WebDriver cannot drive).
  const DRAG_THRESHOLD = 5;

  function onCardPointerDown(ev) {
    const rk = state.rack;
    if (!rk || ev.button !== 0 || ev.isPrimary === false) return;
    // Controls inside the card keep their own behaviour.
    if (ev.target.closest("input, select, button, a, label, textarea")) return;
    const card = ev.currentTarget;
    const mac = card.dataset.mac;
    ev.preventDefault(); // no text selection while dragging
    card.focus({ preventScroll: true });
    rk.press = { mac, card, x: ev.clientX, y: ev.clientY, pointerId: ev.pointerId, additive: ev.ctrlKey || ev.metaKey || ev.shiftKey };
    try { card.setPointerCapture(ev.pointerId); } catch (_) { /* synthetic pointers */ }
    card.addEventListener("pointermove", onPointerMove);
    card.addEventListener("pointerup", onPointerUp);
    card.addEventListener("pointercancel", onPointerCancel);
  }

  function detachPointer(card) {
    card.removeEventListener("pointermove", onPointerMove);
    card.removeEventListener("pointerup", onPointerUp);
    card.removeEventListener("pointercancel", onPointerCancel);
  }

  function columnAt(x, y) {
    const el = document.elementFromPoint(x, y);
    return el ? el.closest("[data-drop-role]") : null;
  }

  function onPointerMove(ev) {
    const rk = state.rack;
    if (!rk || !rk.press) return;
    const p = rk.press;
    if (!rk.drag) {
      if (Math.abs(ev.clientX - p.x) + Math.abs(ev.clientY - p.y) < DRAG_THRESHOLD) return;
      // Dragging a selected card moves the whole selection; an unselected one moves alone.
      const macs = rk.selected.has(p.mac) ? [...rk.selected] : [p.mac];
      const ghost = h("div", { class: "drag-ghost", "aria-hidden": "true", testid: "drag-ghost" },
        macs.length === 1 ? (rk.machines.get(p.mac).hostname || p.mac) : `${macs.length} machines`);
      document.body.append(ghost);
      rk.drag = { macs, ghost, over: null };
      for (const mac of macs) {
        const c = document.querySelector(`[data-testid="card-${CSS.escape(mac)}"]`);
        if (c) c.classList.add("dragging");
      }
      document.body.classList.add("is-dragging");
    }
    const d = rk.drag;
    d.ghost.style.transform = `translate(${ev.clientX + 12}px, ${ev.clientY + 12}px)`;
    const col = columnAt(ev.clientX, ev.clientY);
    if (col !== d.over) {
      if (d.over) d.over.classList.remove("drop-target");
      d.over = col;
      if (col) col.classList.add("drop-target");
      previewBadges(d.macs, col ? col.dataset.role || null : null);
    }
  }

  /** While dragging over a column, the dragged cards' badges show that role's validation. */
  function previewBadges(macs, role) {
    const rk = state.rack;
    for (const mac of macs) {
      const m = rk.machines.get(mac);
      const old = document.querySelector(`[data-testid="badge-${CSS.escape(mac)}"]`);
      if (m && old) old.replaceWith(badge(m, role !== null ? role : plannedRole(rk, m)));
    }
  }

  function onPointerUp(ev) {
    const rk = state.rack;
    if (!rk || !rk.press) return;
    const p = rk.press;
    rk.press = null;
    detachPointer(p.card);
    if (!rk.drag) {
      toggleSelect(p.mac, p.additive);
      return;
    }
    const col = columnAt(ev.clientX, ev.clientY);
    endDrag(col);
  }

  function onPointerCancel() {
    const rk = state.rack;
    if (!rk) return;
    if (rk.press) detachPointer(rk.press.card);
    rk.press = null;
    if (rk.drag) endDrag(null);
  }

  function endDrag(col) {
    const rk = state.rack;
    const d = rk.drag;
    rk.drag = null;
    if (d) {
      d.ghost.remove();
      if (d.over) d.over.classList.remove("drop-target");
    }
    document.body.classList.remove("is-dragging");
    if (d && col) {
      planMove(d.macs, col.dataset.role || null);
    } else {
      drawRack();
    }
  }

  function openPlanDialog() {
    const rk = state.rack;
    const rows = [...rk.plan].map(([mac, role]) => {
      const m = rk.machines.get(mac);
      const v = role && m && m.validations ? m.validations[role] : null;
      return h("tr", { testid: `plan-row-${mac}` },
        h("td", { class: "mono" }, mac),
        h("td", {}, (m && m.hostname) || ""),
        h("td", {}, (m && m.role) || "unassigned"),
        h("td", { "aria-hidden": "true" }, "→"),
        h("td", {}, role || "unassigned"),
        h("td", {}, v ? (v.ok ? "✓ fits" : `✗ ${v.failures.join("; ")}`) : ""));
    });
    const result = h("div", { testid: "plan-result", role: "status" });
    const apply = h("button", { type: "button", testid: "plan-apply" }, `Apply ${rk.plan.size} change${rk.plan.size === 1 ? "" : "s"}`);
    const cancel = h("button", { type: "button", class: "secondary", testid: "plan-cancel" }, "Cancel");
    const discard = h("button", { type: "button", class: "secondary", testid: "plan-discard-dialog" }, "Discard plan");
    const dialog = h("dialog", { testid: "plan-dialog", "aria-labelledby": "plan-title", class: "plan-dialog" },
      h("h2", { id: "plan-title" }, "Review the plan"),
      h("table", { class: "data" },
        h("thead", {}, h("tr", {}, ["MAC", "Hostname", "From", "", "To", "Validation"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, rows)),
      result,
      h("div", { class: "actions" }, discard, cancel, apply));
    const close = () => { dialog.close(); dialog.remove(); };
    cancel.addEventListener("click", close);
    dialog.addEventListener("cancel", () => dialog.remove());
    discard.addEventListener("click", () => { rk.plan.clear(); close(); drawRack(); announce("Plan discarded."); });
    apply.addEventListener("click", async () => {
      apply.disabled = true;
      const failures = [];
      for (const [mac, role] of [...rk.plan]) {
        try {
          await api("PUT", `${API}/machines/${encodeURIComponent(mac)}/role`, { role });
          rk.plan.delete(mac);
          const m = rk.machines.get(mac);
          if (m) m.role = role; // until the stream's next snapshot says so too
        } catch (e) {
          if (e.status === 401) return;
          failures.push(`${mac}: ${e.message}`);
        }
      }
      drawRack();
      if (failures.length) {
        result.replaceChildren(h("p", { class: "error", role: "alert" }, `${failures.length} change${failures.length === 1 ? "" : "s"} failed:`),
          h("ul", {}, failures.map((f) => h("li", {}, f))));
        apply.disabled = false;
      } else {
        close();
        announce("Plan applied.");
      }
    });
    document.body.append(dialog);
    dialog.showModal();
    apply.focus();
  }

  // ------------------------------------------------------------------ deploy

  async function renderDeploy() {
    const dp = { machines: [], live: false };
    const live = h("span", { class: "live", testid: "rack-live", dataset: { live: "false" } }, "connecting…");
    const result = h("div", { testid: "deploy-result", role: "status" });
    const deploy = isAdmin() ? h("button", { type: "button", testid: "deploy-selected" }, "Deploy selected") : null;
    const list = h("div", { id: "deploy-list" });
    page("Deploy", h("div", { class: "page-head" }, h("p", { class: "hint" }, "Tick machines with a role and deploy them: each reboots into its installer. Progress comes from each machine's timeline."), live),
      h("div", { class: "toolbar" }, deploy), result, list);
    const draw = () => {
      const sel = state.deploySelected;
      for (const mac of [...sel]) if (!dp.machines.some((m) => m.mac === mac)) sel.delete(mac);
      if (deploy) {
        deploy.disabled = sel.size === 0;
        deploy.textContent = `Deploy selected (${sel.size})`;
      }
      const focused = document.activeElement && list.contains(document.activeElement) ? document.activeElement.dataset.testid : null;
      list.replaceChildren(dp.machines.length === 0 ? h("p", {}, "No machines yet.") :
        h("table", { class: "data deploy", testid: "deploy-table" },
          h("thead", {}, h("tr", {}, isAdmin() ? h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Select")) : null,
            ["Machine", "Role", "State", "Progress"].map((t) => h("th", { scope: "col" }, t)))),
          h("tbody", {}, dp.machines.map((m) => h("tr", { testid: `deploy-row-${m.mac}`, dataset: { state: m.state } },
            isAdmin() ? h("td", {}, h("input", {
              type: "checkbox", testid: `deploy-select-${m.mac}`, checked: sel.has(m.mac),
              "aria-label": `Select ${m.hostname || m.mac} for deploy`,
              on: { change: (ev) => { if (ev.target.checked) sel.add(m.mac); else sel.delete(m.mac); draw(); } },
            })) : null,
            h("td", {}, h("a", { href: `#/machines/${encodeURIComponent(m.mac)}` }, m.hostname || m.mac), m.hostname ? h("div", { class: "mono small" }, m.mac) : null),
            h("td", {}, m.role || "—"),
            h("td", {}, h("span", { class: `state state-${m.state}` }, m.state)),
            h("td", { class: "progress-cell" }, progressView(m)))))));
      if (focused) {
        const el = list.querySelector(`[data-testid="${CSS.escape(focused)}"]`);
        if (el) el.focus();
      }
    };
    if (deploy) {
      deploy.addEventListener("click", async () => {
        deploy.disabled = true;
        const macs = [...state.deploySelected];
        const failures = [];
        for (const mac of macs) {
          try {
            await api("POST", `${API}/machines/${encodeURIComponent(mac)}/redeploy`);
            state.deploySelected.delete(mac);
          } catch (e) {
            if (e.status === 401) return;
            failures.push(`${mac}: ${e.message}`);
          }
        }
        const ok = macs.length - failures.length;
        result.replaceChildren(...[
          ok ? h("p", {}, `Deploy started for ${ok} machine${ok === 1 ? "" : "s"}: a machine whose agent is alive reboots into its installer; one with power settings is power-cycled; any other needs to be powered on or rebooted by hand.`) : null,
          failures.length ? h("div", { class: "error", role: "alert" }, h("p", {}, "Not deployed:"), h("ul", {}, failures.map((f) => h("li", {}, f)))) : null,
        ].filter(Boolean));
        draw();
      });
    }
    subscribeRack((msg) => { dp.machines = msg.machines || []; draw(); }, (on) => {
      live.dataset.live = on ? "true" : "false";
      live.textContent = on ? "● live" : "reconnecting…";
    });
    draw();
  }

  /** A machine's progress: a progress bar, its steps, and a failed step with its log tail. */
  function progressView(m) {
    const p = m.progress;
    if (!p) return h("span", { class: "hint" }, "—");
    const pct = Math.max(0, Math.min(100, Math.round(Number(p.percent) || 0)));
    const failed = p.failed;
    return h("div", { class: "progress-box" },
      h("div", {
        class: `progressbar${failed ? " failed" : pct >= 100 ? " complete" : ""}`, role: "progressbar",
        "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": String(pct),
        "aria-label": `Deploy progress of ${m.hostname || m.mac}`, testid: `progress-${m.mac}`,
      }, h("div", { class: "fill", dataset: { pct: String(pct) } }), h("span", { class: "pct" }, `${pct}%`)),
      h("ol", { class: "steps", testid: `steps-${m.mac}` }, (p.steps || []).map((s, i) => h("li", {
        class: `step step-${s.state}`, testid: `step-${m.mac}-${i}`, dataset: { state: s.state },
        title: s.message || null,
      }, h("span", { class: "visually-hidden" }, `${s.state}: `), s.name, s.at ? h("span", { class: "at" }, ` ${new Date(s.at).toLocaleTimeString()}`) : null))),
      failed ? h("div", { class: "failed", role: "alert", testid: `failed-${m.mac}` },
        h("strong", {}, `Failed at ${failed.step}: `), h("span", { testid: `failed-message-${m.mac}` }, failed.message),
        failed.log_tail && failed.log_tail.length
          ? h("details", { open: true }, h("summary", {}, "Log tail"), h("pre", { class: "log", testid: `logtail-${m.mac}` }, failed.log_tail.join("\n")))
          : null) : null);
  }

  // The progress bars' widths: set from data-pct by script (CSP forbids inline styles in
  // markup, but styles set through the CSSOM are allowed).
  const fillObserver = new MutationObserver(() => {
    for (const f of document.querySelectorAll(".progressbar .fill[data-pct]")) {
      f.style.width = `${f.dataset.pct}%`;
    }
  });

  // ------------------------------------------------------------------ machine detail

  async function renderMachine(mac) {
    if (!mac) { location.hash = "#/rack"; return; }
    const path = `${API}/machines/${encodeURIComponent(mac)}`;
    const [m, events] = await Promise.all([api("GET", path), api("GET", `${path}/events?limit=500`)]);
    const inv = m.inventory || {};
    const kv = (rows) => h("dl", { class: "kv" }, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v === null || v === undefined || v === "" ? "—" : v)]));
    const powerBox = h("section", { class: "card", testid: "machine-power", "aria-labelledby": "power-h" }, h("h2", { id: "power-h" }, "Power"));
    const invBox = h("section", { class: "card", testid: "machine-inventory", "aria-labelledby": "inv-h" },
      h("h2", { id: "inv-h" }, "Inventory"),
      kv([
        ["MAC", m.mac], ["Hostname", m.hostname], ["Role", m.role], ["State", m.state],
        ["Since", fmtTime(m.state_since)], ["Reserved IP", m.reserved_ip],
        ["Firmware", inv.firmware ? inv.firmware.toUpperCase() : null],
        ["CPU", inv.cpu ? `${inv.cpu.model || "?"} — ${inv.cpu.threads} threads (${inv.cpu.sockets} sockets, ${inv.cpu.cores} cores)` : null],
        ["Memory", inv.memory_bytes ? fmtBytes(inv.memory_bytes) : null],
        ["Vendor", inv.dmi && [inv.dmi.vendor, inv.dmi.product].filter(Boolean).join(" ")],
        ["Serial", inv.dmi && inv.dmi.serial], ["Kernel", inv.kernel],
      ]),
      inv.disks && inv.disks.length ? h("table", { class: "data" }, h("caption", {}, "Disks"),
        h("thead", {}, h("tr", {}, ["Name", "Size", "Model", "Serial", "Type"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, inv.disks.map((d) => h("tr", {}, h("td", {}, d.name), h("td", {}, fmtBytes(d.size_bytes)), h("td", {}, d.model || ""), h("td", {}, d.serial || ""), h("td", {}, d.rotational ? "HDD" : "SSD"))))) : null,
      inv.nics && inv.nics.length ? h("table", { class: "data" }, h("caption", {}, "Network interfaces"),
        h("thead", {}, h("tr", {}, ["Name", "MAC", "Link", "Speed"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, inv.nics.map((n) => h("tr", {}, h("td", {}, n.name), h("td", { class: "mono" }, n.mac), h("td", {}, n.link_up ? "up" : "down"), h("td", {}, n.speed_mbps ? `${n.speed_mbps} Mb/s` : ""))))) : null,
      m.inventory ? null : h("p", { class: "hint" }, "No inventory yet: the agent reports it once the machine boots the discovery ramdisk."));
    const timeline = h("section", { class: "card", testid: "machine-timeline", "aria-labelledby": "tl-h" },
      h("h2", { id: "tl-h" }, "Timeline"),
      (events || []).length ? h("table", { class: "data" },
        h("thead", {}, h("tr", {}, ["When", "Kind", "Message", "State"].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, [...events].sort((a, b) => b.seq - a.seq).map((e) => h("tr", {},
          h("td", { class: "nowrap" }, fmtTime(e.at)), h("td", {}, short(e.kind)), h("td", {}, e.message),
          h("td", {}, e.from_state || e.to_state ? `${e.from_state || ""} → ${e.to_state || ""}` : "")))))
        : h("p", {}, "No events."));
    page(m.hostname ? `${m.hostname} (${m.mac})` : m.mac,
      h("p", {}, h("a", { href: "#/rack" }, "← Rack")),
      h("div", { class: "machine-detail", testid: "machine-detail" }, h("div", {}, invBox, powerBox), timeline));
    drawPower(mac, powerBox);
  }

  async function drawPower(mac, box) {
    const path = `${API}/machines/${encodeURIComponent(mac)}/power`;
    const stateLine = h("p", { testid: "power-state" }, "Reading the power state…");
    const msg = h("p", { role: "status", testid: "power-result" });
    const buttons = isAdmin() ? h("div", { class: "actions left" }, [["on", "Power on"], ["off", "Power off"], ["cycle", "Power cycle"], ["pxe-once", "Network boot once"]].map(([action, label]) =>
      h("button", {
        type: "button", class: action === "off" || action === "cycle" ? "secondary danger" : "secondary", testid: `power-${action}`,
        on: {
          click: async (ev) => {
            ev.target.disabled = true;
            msg.textContent = `${label}…`;
            try {
              const st = await api("POST", path, { action });
              stateLine.textContent = `Power: ${st.state} (answered in ${st.took_ms} ms)`;
              msg.textContent = `${label}: done.`;
            } catch (e) {
              msg.textContent = `${label} failed: ${e.message}`;
            } finally {
              ev.target.disabled = false;
            }
          },
        },
      }, label))) : null;
    box.append(stateLine, buttons, msg);
    try {
      const st = await api("GET", path);
      stateLine.textContent = `Power: ${st.state} (answered in ${st.took_ms} ms)`;
    } catch (e) {
      stateLine.textContent = e.status === 404 || e.status === 409 ? `No power control: ${e.message}` : `Power state unknown: ${e.message}`;
    }
  }

  // ------------------------------------------------------------------ images

  async function renderImages() {
    const images = await listAll("images");
    const admin = isAdmin();
    const table = images.length ? h("table", { class: "data", testid: "images-table" },
      h("thead", {}, h("tr", {}, ["Name", "Size", "SHA-256", "Uploaded", admin ? "" : null].filter((x) => x !== null).map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, images.map((i) => h("tr", { testid: `image-row-${i.name}` },
        h("td", {}, i.name), h("td", { class: "nowrap" }, fmtBytes(i.size_bytes)), h("td", { class: "mono small" }, i.sha256),
        h("td", { class: "nowrap" }, fmtTime(i.uploaded_at)),
        admin ? h("td", {}, h("button", {
          type: "button", class: "secondary small danger", testid: `image-delete-${i.name}`, "aria-label": `Delete image ${i.name}`,
          on: { click: async () => { try { await api("DELETE", `${API}/images/${encodeURIComponent(i.name)}`); announce(`Image ${i.name} deleted.`); route(); } catch (e) { announce(`Cannot delete ${i.name}: ${e.message}`, "error"); } } },
        }, "Delete")) : null))))
      : h("p", { testid: "images-table" }, "No images yet.");
    page("Images", table, admin ? uploadForm() : null);
  }

  function uploadForm() {
    const file = h("input", { type: "file", id: "upload-file", testid: "upload-file", required: true });
    const name = h("input", { type: "text", id: "upload-name", testid: "upload-name", autocomplete: "off", spellcheck: "false", pattern: "[A-Za-z0-9_][A-Za-z0-9._-]*", "aria-describedby": "upload-name-hint" });
    const bar = h("div", { class: "progressbar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": "0", "aria-label": "Upload progress", testid: "upload-progress", hidden: true },
      h("div", { class: "fill", dataset: { pct: "0" } }), h("span", { class: "pct" }, "0%"));
    const result = h("p", { role: "status", testid: "upload-result" });
    const submit = h("button", { type: "submit", testid: "upload-submit" }, "Upload");
    file.addEventListener("change", () => { if (file.files[0] && !name.value) name.value = file.files[0].name; });
    const setPct = (pct) => {
      bar.setAttribute("aria-valuenow", String(pct));
      bar.querySelector(".fill").dataset.pct = String(pct);
      bar.querySelector(".pct").textContent = `${pct}%`;
    };
    const form = h("form", { class: "card", testid: "upload-form", "aria-labelledby": "upload-h" },
      h("h2", { id: "upload-h" }, "Upload an image"),
      h("div", { class: "grid2" },
        h("div", { class: "field" }, h("label", { for: "upload-file" }, "File"), file),
        h("div", { class: "field" }, h("label", { for: "upload-name" }, "Name"), name,
          h("span", { class: "hint", id: "upload-name-hint" }, "Letters, digits, “.”, “_”, “-”; e.g. rocky-9-vmlinuz."))),
      bar, result, h("div", { class: "actions left" }, submit));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const f = file.files[0];
      const n = name.value.trim();
      if (!f || !n) { result.textContent = "Choose a file and a name."; return; }
      if (!window.crypto || !crypto.subtle) { result.textContent = "The browser cannot compute the checksum here (it needs HTTPS)."; return; }
      submit.disabled = true;
      bar.hidden = false;
      setPct(0);
      try {
        result.textContent = "Computing the SHA-256 checksum…";
        const digest = await crypto.subtle.digest("SHA-256", await f.arrayBuffer());
        const sha = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
        result.textContent = `Uploading ${f.name} (${fmtBytes(f.size)})…`;
        await new Promise((resolve, reject) => {
          const xhr = new XMLHttpRequest();
          xhr.open("PUT", `${API}/images/${encodeURIComponent(n)}?sha256=${sha}`);
          xhr.withCredentials = true;
          xhr.setRequestHeader("Content-Type", "application/octet-stream");
          for (const [k, v] of Object.entries(csrfHeaders("PUT"))) xhr.setRequestHeader(k, v);
          xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) setPct(Math.floor((e.loaded / e.total) * 100)); });
          xhr.addEventListener("load", () => {
            if (xhr.status === 401) { sessionExpired(); reject(new ApiError(401, null)); return; }
            if (xhr.status >= 200 && xhr.status < 300) { resolve(); return; }
            let body = null;
            try { body = JSON.parse(xhr.responseText); } catch (_) { body = { message: xhr.responseText || `HTTP ${xhr.status}` }; }
            reject(new ApiError(xhr.status, body));
          });
          xhr.addEventListener("error", () => reject(new Error("the connection failed")));
          xhr.addEventListener("abort", () => reject(new Error("aborted")));
          xhr.send(f);
        });
        setPct(100);
        announce(`Image ${n} uploaded.`);
        route();
      } catch (e) {
        if (e.status !== 401) result.textContent = `Upload failed: ${e.message}`;
      } finally {
        submit.disabled = false;
      }
    });
    return form;
  }

  // ------------------------------------------------------------------ tokens

  async function renderTokens() {
    if (!isAdmin()) { page("Tokens", h("p", {}, "Only an admin session can see tokens.")); return; }
    const tokens = await listAll("tokens");
    const fresh = state.freshToken;
    state.freshToken = null;
    const table = h("table", { class: "data", testid: "tokens-table" },
      h("thead", {}, h("tr", {}, ["ID", "Name", "Scope", "Machine", "Created", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, tokens.map((t) => h("tr", { testid: `token-row-${t.id}` },
        h("td", {}, String(t.id)), h("td", {}, t.name), h("td", {}, t.scope), h("td", { class: "mono" }, t.mac || ""),
        h("td", { class: "nowrap" }, fmtTime(t.created_at)),
        h("td", {}, h("button", {
          type: "button", class: "secondary small danger", testid: `token-revoke-${t.id}`, "aria-label": `Revoke token ${t.id} (${t.name})`,
          on: { click: async () => { try { await api("DELETE", `${API}/tokens/${t.id}`); announce(`Token ${t.name} revoked.`); route(); } catch (e) { announce(`Cannot revoke: ${e.message}`, "error"); } } },
        }, "Revoke"))))));
    const name = h("input", { id: "token-name", testid: "token-name", required: true, autocomplete: "off" });
    const scope = h("select", { id: "token-scope", testid: "token-scope" }, ["read", "admin", "enroll"].map((s) => h("option", { value: s }, s)));
    const err = h("p", { class: "error", role: "alert", hidden: true, testid: "token-error" });
    const form = h("form", { class: "card", testid: "token-form", "aria-labelledby": "token-h" },
      h("h2", { id: "token-h" }, "Create a token"),
      h("div", { class: "grid2" },
        h("div", { class: "field" }, h("label", { for: "token-name" }, "Name"), name),
        h("div", { class: "field" }, h("label", { for: "token-scope" }, "Scope"), scope)),
      err, h("div", { class: "actions left" }, h("button", { type: "submit", testid: "token-create" }, "Create token")));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      err.hidden = true;
      if (!name.value.trim()) { err.textContent = "Give the token a name."; err.hidden = false; name.focus(); return; }
      try {
        const created = await api("POST", `${API}/tokens`, { name: name.value.trim(), scope: scope.value });
        state.freshToken = created;
        route();
      } catch (e) {
        if (e.status !== 401) { err.textContent = `Cannot create the token: ${e.message}`; err.hidden = false; }
      }
    });
    const freshBox = fresh ? h("section", { class: "card notice", testid: "token-new-box", role: "alert", "aria-labelledby": "fresh-h" },
      h("h2", { id: "fresh-h" }, `New token “${fresh.info.name}” (${fresh.info.scope})`),
      h("p", {}, "Copy it now: it is shown only this once and cannot be read again."),
      h("pre", { class: "secret", testid: "token-new", tabindex: "0" }, fresh.token),
      h("button", { type: "button", class: "secondary", testid: "token-new-dismiss", on: { click: (ev) => ev.target.closest("section").remove() } }, "I have copied it")) : null;
    page("API tokens", freshBox, table, form);
    if (freshBox) freshBox.querySelector("pre").focus();
  }

  // ------------------------------------------------------------------ read-only tables

  /** A table of records: the given columns, or every scalar field found. */
  function recordTable(testid, rows, columns, empty) {
    if (!rows.length) return h("p", { testid }, empty || "None.");
    const cols = columns || [...new Set(rows.slice(0, 50).flatMap((r) => Object.keys(r)))];
    const cell = (v, k) => {
      if (/_at$|_since$/.test(k) && typeof v === "string") return fmtTime(v);
      if (Array.isArray(v)) return v.map((x) => (typeof x === "object" && x !== null ? (x.name || x.mac || JSON.stringify(x)) : String(x))).join(", ");
      return short(v);
    };
    return h("div", { class: "table-wrap" }, h("table", { class: "data", testid },
      h("thead", {}, h("tr", {}, cols.map((c) => h("th", { scope: "col" }, c.replace(/_/g, " "))))),
      h("tbody", {}, rows.map((r) => h("tr", {}, cols.map((c) => h("td", {}, cell(r[c], c))))))));
  }

  async function section(title, testid, path, columns, empty) {
    try {
      const rows = await listAll(path);
      return h("section", { "aria-label": title }, h("h2", {}, title), recordTable(testid, rows, columns, empty));
    } catch (e) {
      if (e.status === 401) throw e;
      return h("section", {}, h("h2", {}, title), h("p", { class: "error", testid }, `Not available: ${e.message}`));
    }
  }

  async function renderVms() {
    const [vms, hosts] = await Promise.all([
      section("Virtual machines", "vms-table", "vms", ["name", "kind", "state", "host", "vcpus", "memory_mib", "power", "ha", "message"], "No VMs."),
      section("Hypervisor hosts", "hosts-table", "hosts", null, "No hosts report in."),
    ]);
    page("VMs and hosts", vms, hosts);
  }

  async function renderAlarms() {
    const alarms = await section("Alarms", "alarms-table", "alarms", ["id", "severity", "kind", "subject", "message", "raised_at", "cleared_at"], "No alarms.");
    page("Alarms", alarms);
  }

  async function renderNetworks() {
    const [nets, ports, groups] = await Promise.all([
      section("Tenant networks", "networks-table", "networks", null, "No networks."),
      section("Ports", "ports-table", "ports", null, "No ports."),
      section("Security groups", "secgroups-table", "secgroups", null, "No security groups."),
    ]);
    page("Networks", nets, ports, groups);
  }

  // ------------------------------------------------------------------ start

  function start() {
    document.getElementById("logout").addEventListener("click", logout);
    window.addEventListener("hashchange", route);
    fillObserver.observe(document.getElementById("main"), { subtree: true, childList: true, attributes: true, attributeFilter: ["data-pct"] });
    // Without a hash, replacing it fires hashchange, which routes.
    if (!location.hash) location.replace("#/rack");
    else route();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
