// secop-gateway's built-in web client: plain SECoP (RFC-107: one message per WebSocket
// TEXT frame) on this page's own origin, /ws. No libraries, no build step; served from
// the binary (src/webclient.rs) under a strict Content-Security-Policy, so nothing here
// may use inline scripts or styles, eval, or another origin.
//
// Flow: *IDN? (any reply line is accepted), describe, build the page, activate; updates
// are stored and the DOM is painted at most once per animation frame, only for modules
// on screen. On a close: values greyed, a banner, reconnect with backoff 0.5 s .. 10 s.
"use strict";
(function () {
  const BACKOFF_MIN = 500;
  const BACKOFF_MAX = 10000;
  const HANDSHAKE_MS = 10000;       // *IDN? .. active must not take longer
  const PLOT_PERIOD_MS = 250;       // plots redraw at most 4 times a second
  const PLOT_POINTS = 600;          // points kept per plotted parameter
  const DEFAULT_WINDOW = 3600;      // s of history shown when the gateway gives none
  const LAG_SAMPLES = 1 << 18;

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  };

  const S = {
    ws: null, phase: "idle", backoff: BACKOFF_MIN, retry: null, watchdog: null,
    idn: null, descText: null, desc: null, readOnly: false, timeout: 10,
    modules: new Map(), params: new Map(), dirty: [], frame: false, visible: new Set(),
    plotPending: false, plotTimer: null, down: false,
    pending: new Map(), sent: [], connects: 0, lives: 0,
    history: null, histWindow: DEFAULT_WINDOW, clockOffset: null, lastPlot: 0,
    updates: 0, updatesShown: -1,
    lags: new Float64Array(LAG_SAMPLES), lagN: 0,
    transport: new Float64Array(LAG_SAMPLES), transportN: 0,
    frameArrivals: [], firstValuePaint: null, firstLive: null,
    csp: [],
  };

  document.addEventListener("securitypolicyviolation", (e) => {
    S.csp.push(`${e.violatedDirective} ${e.blockedURI}`);
  });

  // ------------------------------------------------------------------ formatting
  function stripZeros(s) {
    if (s.indexOf(".") < 0) return s;
    s = s.replace(/0+$/, "");
    return s.endsWith(".") ? s.slice(0, -1) : s;
  }
  function cExp(x, prec) {
    // C's %e: at least two exponent digits
    return x.toExponential(prec).replace(/e([+-])(\d)$/, "e$10$2");
  }
  function fmtG(x, p, alt) {
    if (!isFinite(x)) return String(x);
    if (x === 0) return "0";
    if (p === 0) p = 1;
    const s = x.toExponential(p - 1);
    const i = s.indexOf("e");
    const exp = Number(s.slice(i + 1));
    if (exp < -4 || exp >= p) {
      const mant = alt ? s.slice(0, i) : stripZeros(s.slice(0, i));
      return mant + "e" + (exp < 0 ? "-" : "+") + String(Math.abs(exp)).padStart(2, "0");
    }
    const f = x.toFixed(Math.min(100, Math.max(0, p - 1 - exp)));
    return alt ? f : stripZeros(f);
  }
  const FMT = /^%([-+ 0#]*)(\d*)(?:\.(\d+))?([fFeEgGdis])$/;
  // printf subset: %.Nf %.Ne %.Ng %d %s (flags and width accepted, width applied)
  function cFormat(x, fmtstr) {
    const m = fmtstr ? FMT.exec(fmtstr) : null;
    if (!m) return fmtG(x, 6, false);
    const prec = m[3] !== undefined ? Math.min(Number(m[3]), 100) : 6;
    let s;
    switch (m[4]) {
      case "f": case "F": s = isFinite(x) ? x.toFixed(prec) : String(x); break;
      case "e": s = isFinite(x) ? cExp(x, prec) : String(x); break;
      case "E": s = isFinite(x) ? cExp(x, prec).toUpperCase() : String(x); break;
      case "g": s = fmtG(x, prec, m[1].includes("#")); break;
      case "G": s = fmtG(x, prec, m[1].includes("#")).toUpperCase(); break;
      case "d": case "i": s = isFinite(x) ? String(Math.round(x)) : String(x); break;
      default: s = String(x);
    }
    if (m[1].includes("+") && x >= 0) s = "+" + s;
    const width = Number(m[2] || 0);
    return width > s.length ? s.padStart(width, " ") : s;
  }
  function scaledFmt(di) {
    if (di.fmtstr) return di.fmtstr;
    const digits = Math.max(0, -Math.floor(Math.log10(di.scale) + 1e-9));
    return "%." + digits + "f";
  }
  function withUnit(text, di) {
    return di && di.unit ? text + " " + di.unit : text;
  }
  function b64len(s) {
    try { return atob(s).length; } catch (e) { return -1; }
  }
  function hexPreview(s, n) {
    try {
      const b = atob(s);
      let out = "";
      for (let i = 0; i < Math.min(n, b.length); i++) out += (i ? " " : "") + b.charCodeAt(i).toString(16).padStart(2, "0");
      return b.length > n ? out + " …" : out;
    } catch (e) {
      return "(invalid base64)";
    }
  }
  // A function value -> text for datainfo `di` (units included); built once per parameter.
  function formatter(di, unitToo) {
    const unit = unitToo === false ? (t) => t : (t) => withUnit(t, di);
    switch (di && di.type) {
      case "double": {
        const f = di.fmtstr;
        return (v) => (typeof v === "number" ? unit(cFormat(v, f)) : JSON.stringify(v));
      }
      case "int":
        return (v) => (typeof v === "number" ? unit(di.fmtstr ? cFormat(v, di.fmtstr) : String(v)) : JSON.stringify(v));
      case "scaled": {
        const f = scaledFmt(di);
        return (v) => (typeof v === "number" ? unit(cFormat(v * di.scale, f)) : JSON.stringify(v));
      }
      case "bool":
        return (v) => (v === true ? "true" : v === false ? "false" : JSON.stringify(v));
      case "enum": {
        const names = new Map();
        for (const k in di.members) names.set(di.members[k], k);
        return (v) => (names.has(v) ? names.get(v) : JSON.stringify(v));
      }
      case "string":
        return (v) => (typeof v === "string" ? v : JSON.stringify(v));
      case "blob":
        return (v) => (typeof v === "string" ? `${b64len(v)} bytes: ${hexPreview(v, 12)}` : JSON.stringify(v));
      case "array": {
        const f = formatter(di.members, false);
        return (v) => {
          if (!Array.isArray(v)) return JSON.stringify(v);
          const shown = v.slice(0, 20).map(f).join(", ");
          const more = v.length > 20 ? `, … (${v.length} items)` : "";
          return withUnit("[" + shown + more + "]", di.members);
        };
      }
      case "tuple": {
        const fs = (di.members || []).map((m) => formatter(m));
        return (v) => (Array.isArray(v) ? "(" + v.map((x, i) => (fs[i] ? fs[i](x) : JSON.stringify(x))).join(", ") + ")" : JSON.stringify(v));
      }
      case "struct": {
        const fs = {};
        for (const k in di.members) fs[k] = formatter(di.members[k]);
        return (v) => {
          if (!v || typeof v !== "object" || Array.isArray(v)) return JSON.stringify(v);
          return "{" + Object.keys(v).map((k) => `${k}: ${fs[k] ? fs[k](v[k]) : JSON.stringify(v[k])}`).join(", ") + "}";
        };
      }
      case "matrix":
        // elementtype is a numpy-style type string ("<f4"); an object is accepted too
        return (v) => (v && Array.isArray(v.len) ? `matrix ${v.len.join("×")} of ${(typeof di.elementtype === "string" ? di.elementtype : di.elementtype && di.elementtype.type) || "?"}${b64len(v.blob) >= 0 ? ` (${b64len(v.blob)} bytes)` : ""}` : JSON.stringify(v));
      default:
        return (v) => JSON.stringify(v);
    }
  }
  function statusClass(code) {
    if (typeof code !== "number") return "";
    if (code < 100) return "st-disabled";
    if (code < 200) return "st-idle";
    if (code < 300) return "st-warn";
    if (code < 400) return "st-busy";
    if (code < 500) return "st-error";
    return "";
  }
  const isNumeric = (di) => di && (di.type === "double" || di.type === "int" || di.type === "scaled");
  const firstLine = (text) => String(text || "").split("\n")[0];
  const restLines = (text) => String(text || "").split("\n").slice(1).join("\n").trim();

  // ------------------------------------------------------------------ validation
  // What the gateway checks (protocol/src/datainfo.rs), with its error classes: the page
  // refuses the same values before sending them.
  const err = (cls, text) => ({ error: [cls, text] });
  const show = (x) => (x === undefined || x === null ? ".." : String(x));
  function check(v, di, path) {
    const at = path ? path + ": " : "";
    switch (di.type) {
      case "double":
        if (typeof v !== "number" || !isFinite(v)) return err("WrongType", `${at}expected a number`);
        if ((di.min !== undefined && v < di.min) || (di.max !== undefined && v > di.max))
          return err("RangeError", `${at}${v} is outside [${show(di.min)}, ${show(di.max)}]`);
        return null;
      case "int": case "scaled":
        if (typeof v !== "number" || !Number.isInteger(v)) return err("WrongType", `${at}expected an integer`);
        if ((di.min !== undefined && v < di.min) || (di.max !== undefined && v > di.max))
          return err("RangeError", `${at}${v} is outside [${show(di.min)}, ${show(di.max)}]`);
        return null;
      case "bool":
        return typeof v === "boolean" ? null : err("WrongType", `${at}expected true or false`);
      case "enum": {
        const ok = typeof v === "string" ? v in di.members : Object.values(di.members).includes(v);
        return ok ? null : err("RangeError", `${at}${JSON.stringify(v)} is not a member of the enum`);
      }
      case "string": {
        if (typeof v !== "string") return err("WrongType", `${at}expected a string`);
        const n = [...v].length;
        if (di.maxchars !== undefined && n > di.maxchars) return err("RangeError", `${at}longer than ${di.maxchars} characters`);
        if (di.minchars !== undefined && n < di.minchars) return err("RangeError", `${at}shorter than ${di.minchars} characters`);
        if (di.isUTF8 === false && /[^\x00-\x7f]/.test(v)) return err("RangeError", `${at}only ASCII characters are allowed`);
        return null;
      }
      case "blob": {
        if (typeof v !== "string") return err("WrongType", `${at}expected a base64 string`);
        const n = b64len(v);
        if (n < 0) return err("WrongType", `${at}invalid base64`);
        if (di.maxbytes !== undefined && n > di.maxbytes) return err("RangeError", `${at}more than ${di.maxbytes} bytes`);
        if (di.minbytes !== undefined && n < di.minbytes) return err("RangeError", `${at}less than ${di.minbytes} bytes`);
        return null;
      }
      case "array": {
        if (!Array.isArray(v)) return err("WrongType", `${at}expected an array`);
        if (di.maxlen !== undefined && v.length > di.maxlen) return err("RangeError", `${at}more than ${di.maxlen} items`);
        if (di.minlen !== undefined && v.length < di.minlen) return err("RangeError", `${at}fewer than ${di.minlen} items`);
        for (let i = 0; i < v.length; i++) {
          const e = check(v[i], di.members, `${path || ""}[${i}]`);
          if (e) return e;
        }
        return null;
      }
      case "tuple": {
        if (!Array.isArray(v) || v.length !== di.members.length) return err("WrongType", `${at}expected ${di.members.length} items`);
        for (let i = 0; i < v.length; i++) {
          const e = check(v[i], di.members[i], `${path || ""}[${i}]`);
          if (e) return e;
        }
        return null;
      }
      case "struct": {
        if (!v || typeof v !== "object" || Array.isArray(v)) return err("WrongType", `${at}expected an object`);
        const optional = di.optional || [];
        for (const k in v) if (!(k in di.members)) return err("WrongType", `${at}unknown member ${k}`);
        for (const k in di.members) {
          if (!(k in v)) {
            if (!optional.includes(k)) return err("WrongType", `${at}member ${k} is missing`);
            continue;
          }
          const e = check(v[k], di.members[k], path ? `${path}.${k}` : k);
          if (e) return e;
        }
        return null;
      }
      case "matrix":
        return v && typeof v === "object" && Array.isArray(v.len) && typeof v.blob === "string" ? null
          : err("WrongType", `${at}expected {"len": [...], "blob": "<base64>"}`);
      default:
        return null;
    }
  }

  // ------------------------------------------------------------------ editors
  // An editor: { el, read() -> {value} | {error}, set(value), pristine, inputs }.
  let uid = 0;
  function numberEditor(di, label) {
    const input = el("input");
    input.type = "number";
    input.id = "in" + ++uid;
    const scale = di.type === "scaled" ? di.scale : 1;
    input.step = di.type === "double" ? "any" : String(scale);
    if (di.min !== undefined) input.min = String(di.min * scale);
    if (di.max !== undefined) input.max = String(di.max * scale);
    const lab = el("label", "sr", label);
    lab.htmlFor = input.id;
    const wrap = el("span");
    wrap.append(lab, input);
    if (di.unit) wrap.append(el("span", "unit", di.unit));
    const ed = {
      el: wrap, inputs: [input], pristine: true,
      read() {
        const text = input.value.trim();
        if (text === "") return err("WrongType", "a number is needed");
        const x = Number(text);
        if (!isFinite(x)) return err("WrongType", `${text} is not a number`);
        if (di.type === "int" && !Number.isInteger(x)) return err("WrongType", `${text} is not an integer`);
        // The limits are the input's own (datainfo, narrowed by target_limits).
        const lo = input.getAttribute("min");
        const hi = input.getAttribute("max");
        if ((lo !== null && x < Number(lo)) || (hi !== null && x > Number(hi)))
          return err("RangeError", `${x} is outside [${lo === null ? ".." : lo}, ${hi === null ? ".." : hi}]`);
        return { value: di.type === "scaled" ? Math.round(x / scale) : x };
      },
      set(v) {
        if (typeof v !== "number") return;
        const text = String(di.type === "scaled" ? Number((v * scale).toPrecision(12)) : v);
        if (input.value !== text && document.activeElement !== input) input.value = text;
      },
      limits(lo, hi) {
        const a = Math.max(lo, di.min === undefined ? -Infinity : di.min * scale);
        const b = Math.min(hi, di.max === undefined ? Infinity : di.max * scale);
        if (isFinite(a)) input.min = String(a);
        if (isFinite(b)) input.max = String(b);
      },
    };
    return ed;
  }
  function enumEditor(di, label) {
    const sel = el("select");
    sel.id = "in" + ++uid;
    for (const [name, n] of Object.entries(di.members).sort((a, b) => a[1] - b[1])) {
      const o = el("option", null, name);
      o.value = String(n);
      sel.append(o);
    }
    const lab = el("label", "sr", label);
    lab.htmlFor = sel.id;
    const wrap = el("span");
    wrap.append(lab, sel);
    return {
      el: wrap, inputs: [sel], pristine: true,
      read: () => ({ value: Number(sel.value) }),
      set(v) { if (sel.value !== String(v) && document.activeElement !== sel) sel.value = String(v); },
    };
  }
  function boolEditor(di, label) {
    const box = el("input");
    box.type = "checkbox";
    box.id = "in" + ++uid;
    box.setAttribute("role", "switch");
    const lab = el("label", "sr", label);
    lab.htmlFor = box.id;
    const wrap = el("span");
    wrap.append(lab, box);
    return {
      el: wrap, inputs: [box], pristine: true, instant: true,
      read: () => ({ value: box.checked }),
      set(v) { if (typeof v === "boolean") box.checked = v; },
    };
  }
  function textEditor(di, label, json) {
    const input = el("input");
    input.type = "text";
    input.id = "in" + ++uid;
    input.autocomplete = "off";
    input.spellcheck = false;
    if (!json && di.maxchars !== undefined) input.maxLength = di.maxchars;
    if (json || (di.maxchars || 0) > 40) input.className = "wide";
    if (json) input.placeholder = "JSON";
    const lab = el("label", "sr", label);
    lab.htmlFor = input.id;
    const wrap = el("span");
    wrap.append(lab, input);
    return {
      el: wrap, inputs: [input], pristine: true,
      read() {
        let v = input.value;
        if (json) {
          try { v = JSON.parse(v); } catch (e) { return err("WrongType", "not valid JSON"); }
        }
        const e = check(v, di, "");
        return e || { value: v };
      },
      set(v) {
        const text = json ? JSON.stringify(v) : String(v);
        if (input.value !== text && document.activeElement !== input) input.value = text;
      },
    };
  }
  function groupEditor(di, label) {
    const fs = el("fieldset");
    fs.append(el("legend", "sr", label));
    const struct = di.type === "struct";
    const names = struct ? Object.keys(di.members) : di.members.map((_, i) => String(i));
    const optional = struct ? di.optional || [] : [];
    const parts = names.map((name, i) => {
      const mdi = struct ? di.members[name] : di.members[i];
      const caption = struct ? name : `[${i}]`;
      // The member's own (screen-reader) label names it; this caption is for the eye.
      const sub = editorFor(mdi, `${label} ${caption}`);
      const member = el("span", "member");
      const shown = el("span", null, caption);
      shown.setAttribute("aria-hidden", "true");
      member.append(shown, sub.el);
      fs.append(member);
      return { name, caption, sub };
    });
    return {
      el: fs, inputs: parts.flatMap((p) => p.sub.inputs), pristine: true,
      read() {
        const out = struct ? {} : [];
        for (const { name, caption, sub } of parts) {
          if (struct && optional.includes(name) && sub.inputs.length === 1 && sub.inputs[0].value === "") continue;
          const r = sub.read();
          if (r.error) return err(r.error[0], `${caption}: ${r.error[1]}`);
          if (struct) out[name] = r.value; else out.push(r.value);
        }
        const e = check(out, di, "");
        return e || { value: out };
      },
      set(v) {
        if (!v || typeof v !== "object") return;
        for (const { name, sub } of parts) {
          const x = struct ? v[name] : v[Number(name)];
          if (x !== undefined) sub.set(x);
        }
      },
    };
  }
  function editorFor(di, label) {
    switch (di.type) {
      case "double": case "int": case "scaled": return numberEditor(di, label);
      case "enum": return enumEditor(di, label);
      case "bool": return boolEditor(di, label);
      case "string": return textEditor(di, label, false);
      case "tuple": case "struct":
        if ((di.type === "tuple" ? di.members : Object.values(di.members)).every((m) => !["array", "tuple", "struct", "matrix"].includes(m.type)))
          return groupEditor(di, label);
        return textEditor(di, label, true);
      default: return textEditor(di, label, true);   // array, blob, matrix, nested
    }
  }

  // ------------------------------------------------------------------ requests
  function sendLine(text) {
    if (!S.ws || S.ws.readyState !== 1) return false;
    S.ws.send(text);
    S.sent.push(text);
    if (S.sent.length > 200) S.sent.splice(0, 100);
    return true;
  }
  // change/do: resolves with the reply's data, rejects with [class, text].
  function request(action, spec, value) {
    return new Promise((resolve, reject) => {
      if (S.phase !== "live") return reject(["Disconnected", "not connected to the node"]);
      const line = value === undefined ? `${action} ${spec}` : `${action} ${spec} ${JSON.stringify(value)}`;
      if (!sendLine(line)) return reject(["Disconnected", "not connected to the node"]);
      const key = action + " " + spec;
      const entry = { resolve, reject, done: false };
      entry.timer = setTimeout(() => {
        entry.done = true;
        reject(["TimeoutError", "no reply from the node"]);
      }, (S.timeout + 5) * 1000);
      if (!S.pending.has(key)) S.pending.set(key, []);
      S.pending.get(key).push(entry);
    });
  }
  function settle(key, ok, data) {
    const q = S.pending.get(key);
    if (!q || !q.length) return;
    const entry = q.shift();
    clearTimeout(entry.timer);
    if (entry.done) return;
    entry.done = true;
    if (ok) entry.resolve(data); else entry.reject([data[0], data[1]]);
  }
  function failAllPending() {
    for (const q of S.pending.values()) {
      for (const e of q) {
        clearTimeout(e.timer);
        if (!e.done) { e.done = true; e.reject(["Disconnected", "connection lost before the reply"]); }
      }
    }
    S.pending.clear();
  }
  function showMsg(msgEl, kind, text, source) {
    msgEl.textContent = text;
    msgEl.className = "msg" + (kind ? " " + kind : "");
    if (source) msgEl.dataset.source = source; else delete msgEl.dataset.source;
  }

  // ------------------------------------------------------------------ building the page
  function userLevel(vis) {
    // SECoP 2.0: three characters for expert, advanced, user ("w", "r", "-"); 1.0: words.
    if (typeof vis === "string") {
      if (/^[wr-]{3}$/.test(vis)) return vis[2];
      if (vis === "advanced" || vis === "expert") return "-";
      return "w";
    }
    if (typeof vis === "number") return vis <= 1 ? "w" : "-";
    return "w";
  }
  function importance(m) {
    const meaning = m.meaning;
    if (meaning && typeof meaning === "object" && !Array.isArray(meaning) && typeof meaning.importance === "number") return meaning.importance;
    if (Array.isArray(meaning) && typeof meaning[1] === "number") return meaning[1];
    if (typeof m.importance === "number") return m.importance;
    return null;
  }
  function describeText(container, text) {
    const first = firstLine(text);
    const rest = restLines(text);
    if (!rest) {
      container.append(document.createTextNode(first));
      return;
    }
    const d = el("details");
    d.append(el("summary", null, first), el("span", "more", rest));
    container.append(d);
  }
  function isReadOnlyView(desc) {
    if (desc._read_only_view === true) return true;
    // A read-only client gets every parameter read-only: a Writable without a writable
    // parameter can only be that.
    let movers = false;
    for (const name in desc.modules) {
      const m = desc.modules[name];
      const ifc = m.interface_classes || [];
      if (ifc.includes("Writable") || ifc.includes("Drivable")) movers = true;
      for (const a in m.accessibles) {
        const acc = m.accessibles[a];
        if (acc.datainfo && acc.datainfo.type !== "command" && acc.readonly === false) return false;
      }
    }
    return movers;
  }

  let observer = null;
  function buildPage(desc) {
    const old = S.params;
    S.modules = new Map();
    S.params = new Map();
    S.dirty = [];
    S.visible = new Set();
    S.desc = desc;
    S.readOnly = isReadOnlyView(desc);
    S.timeout = typeof desc.timeout === "number" ? desc.timeout : 10;
    if (observer) observer.disconnect();
    observer = "IntersectionObserver" in window ? new IntersectionObserver(onIntersect, { rootMargin: "300px 0px" }) : null;

    $("title").textContent = desc.equipment_id;
    document.title = desc.equipment_id + " - secop-gateway";
    const info = $("node-info");
    info.replaceChildren();
    const headline = el("div");
    const rest = restLines(desc.description);
    const props = Object.keys(desc).filter((k) => !["modules", "equipment_id", "description"].includes(k));
    if (rest || props.length) {
      const d = el("details");
      d.append(el("summary", null, firstLine(desc.description)));
      if (rest) d.append(el("span", "more", rest));
      const dl = el("dl");
      for (const k of props) {
        const v = desc[k];
        dl.append(el("dt", null, k), el("dd", null, typeof v === "string" ? v : JSON.stringify(v)));
      }
      d.append(dl);
      headline.append(d);
    } else {
      headline.textContent = firstLine(desc.description);
    }
    info.append(headline);

    // modules by group, then importance (higher first), then name
    const entries = Object.entries(desc.modules);
    const groups = new Map();
    for (const [name, m] of entries) {
      const g = typeof m.group === "string" ? m.group : "";
      if (!groups.has(g)) groups.set(g, []);
      groups.get(g).push([name, m]);
    }
    // groups by their most important module, then name; modules without a group last
    const top = (g) => Math.max(...groups.get(g).map(([, m]) => (importance(m) === null ? -1 : importance(m))));
    const groupNames = [...groups.keys()].sort((a, b) => {
      if ((a === "") !== (b === "")) return a === "" ? 1 : -1;
      return top(b) - top(a) || a.localeCompare(b);
    });
    const main = $("modules");
    const frag = document.createDocumentFragment();
    for (const g of groupNames) {
      const list = groups.get(g).sort((a, b) => {
        const ia = importance(a[1]);
        const ib = importance(b[1]);
        if (ia !== ib) return (ib === null ? -Infinity : ib) - (ia === null ? -Infinity : ia);
        return a[0].localeCompare(b[0]);
      });
      const section = el("section", "group");
      section.dataset.group = g;
      if (g || groups.size > 1) section.append(el("h2", null, g || "other modules"));
      const cards = el("div", "cards");
      for (const [name, m] of list) cards.append(buildModule(name, m, old));
      section.append(cards);
      frag.append(section);
    }
    main.replaceChildren(frag);
    updateBanner();
  }

  function buildModule(name, m, old) {
    const card = el("section", "module");
    card.id = "m:" + name;
    card.dataset.module = name;
    const modLevel = userLevel(m.visibility);
    if (modLevel === "-") card.classList.add("x");
    const mod = { name, card, visible: !observer, params: [], statusEl: null, statusCls: "" };
    if (!observer) S.visible.add(mod);
    const head = el("div", "mhead");
    head.append(el("h3", null, name));
    const ifc = m.interface_classes || [];
    head.append(el("span", "ifc", ifc.join(", ")));
    const acc = m.accessibles || {};
    if (acc.status) {
      mod.statusEl = el("span", "status", "…");
      mod.statusEl.id = "v:" + name + ":status";
      mod.statusEl.setAttribute("aria-label", name + " status");
      head.append(mod.statusEl);
    }
    const stopButton = !S.readOnly && ifc.includes("Drivable") && acc.stop && acc.stop.datainfo && acc.stop.datainfo.type === "command";
    if (stopButton) {
      const stop = el("button", "stop", "stop");
      stop.type = "button";
      stop.dataset.stop = name;
      stop.title = firstLine(acc.stop.description) || "stop";
      stop.setAttribute("aria-label", `stop ${name}`);
      const msg = el("span", "msg");
      msg.setAttribute("role", "status");
      stop.addEventListener("click", () => {
        showMsg(msg, "", "stopping…");
        request("do", name + ":stop").then(
          () => showMsg(msg, "ok", "stopped"),
          (e) => showMsg(msg, "err", `${e[0]}: ${e[1]}`, "gateway"));
      });
      head.append(stop, msg);
    }
    card.append(head);
    const d = el("div", "desc");
    describeText(d, m.description);
    card.append(d);

    // The parameters now, their rows (inputs, plots) when the card first comes into view:
    // a node of 1000 modules would otherwise build and lay out thousands of controls.
    const rows = [];
    for (const [aname, a] of Object.entries(acc)) {
      if (a.datainfo && a.datainfo.type === "command") {
        if (!(aname === "stop" && stopButton)) rows.push([aname, a, null]);   // the button above
      }
      else {
        const p = makeParam(mod, aname, a, old);
        if (!(aname === "status" && mod.statusEl)) rows.push([aname, a, p]);
      }
    }
    const table = el("table");
    card.append(table);
    mod.build = () => {
      mod.build = null;
      const tbody = el("tbody");
      for (const [aname, a, p] of rows) tbody.append(p ? paramRow(p, a, modLevel) : commandRow(mod, aname, a, modLevel));
      table.append(tbody);
      card.classList.remove("lazy");
      card.style.minHeight = "";
      applyLimits(mod);
    };
    S.modules.set(name, mod);
    if (observer) {
      card.classList.add("lazy");
      card.style.minHeight = `${4 + 2.1 * rows.length}em`;
      observer.observe(card);
    } else {
      mod.build();
    }
    return card;
  }

  function makeParam(mod, name, a, old) {
    const key = mod.name + ":" + name;
    const di = a.datainfo || {};
    const p = {
      key, name, mod, di, fmt: formatter(di), value: undefined, error: null,
      dirty: false, arrival: 0, shown: null, errShown: false, valueText: null, valueEl: null,
      editor: null, hist: null, canvas: null, plotDirty: false, statusName: null,
    };
    if (name === "status" && di.type === "tuple" && di.members && di.members[0]) p.statusName = formatter(di.members[0]);
    if (a.constant !== undefined) { p.value = a.constant; p.dirty = true; S.dirty.push(p); }
    const before = old.get(key);
    if (isNumeric(di) && a.constant === undefined) {
      p.hist = before && before.hist && before.di.type === di.type ? before.hist : { t: [], v: [] };
      if (!before && S.history && S.history[key]) mergeHistory(p, S.history[key]);
    }
    S.params.set(key, p);
    mod.params.push(p);
    return p;
  }

  function paramRow(p, a, modLevel) {
    const name = p.name;
    const tr = el("tr");
    tr.dataset.acc = p.key;
    const level = userLevel(a.visibility);
    if (name.startsWith("_") || level === "-") tr.classList.add("x");
    const th = el("th", null, name);
    th.scope = "row";
    th.title = a.description || "";
    const td = el("td", "v");
    td.id = "v:" + p.key;
    p.valueText = document.createTextNode("");
    td.append(p.valueText);
    p.valueEl = td;
    const editable = !S.readOnly && a.readonly === false;
    tr.append(th, td);
    if (p.hist) {
      const plot = el("td", "p");
      p.canvas = el("canvas", "plot");
      const dpr = window.devicePixelRatio || 1;
      p.canvas.width = Math.round(128 * dpr);
      p.canvas.height = Math.round(30 * dpr);
      p.canvas.setAttribute("role", "img");
      p.canvas.setAttribute("aria-label", `recent history of ${p.key}`);
      p.plotDirty = p.hist.t.length > 0;
      plot.append(p.canvas);
      tr.append(plot);
    } else {
      // no plot (not a number): a long text, blob or matrix takes the plot's place, and
      // the control's as well when there is none
      td.colSpan = editable ? 2 : 3;
    }
    if (editable) {
      const ctl = el("td", "c");
      ctl.append(changeForm(p, a, level === "r" || modLevel === "r"));
      tr.append(ctl);
    } else if (p.hist) {
      tr.append(el("td", "c"));
    }
    return tr;
  }

  function changeForm(p, a, expertOnly) {
    const form = el("form", "ctl");
    form.noValidate = true;   // the page validates (below), not the browser's bubbles
    form.dataset.acc = p.key;
    if (expertOnly) form.classList.add("x");
    const ed = editorFor(p.di, `${p.key}${p.di.unit ? " (" + p.di.unit + ")" : ""}`);
    p.editor = ed;
    const msg = el("span", "msg");
    msg.setAttribute("role", "status");
    msg.setAttribute("aria-live", "polite");
    msg.id = "msg" + ++uid;
    for (const input of ed.inputs) {
      input.addEventListener("input", () => { ed.pristine = false; });
      input.setAttribute("aria-describedby", msg.id);
    }
    const submit = () => {
      const r = ed.read();
      if (r.error) {
        showMsg(msg, "err", `${r.error[0]}: ${r.error[1]}`, "page");
        for (const i of ed.inputs) i.setAttribute("aria-invalid", "true");
        return;
      }
      for (const i of ed.inputs) i.removeAttribute("aria-invalid");
      showMsg(msg, "", "sending…");
      button && (button.disabled = true);
      request("change", p.key, r.value).then(
        (data) => {
          showMsg(msg, "ok", "set");
          ed.pristine = true;
          ed.set(data[0]);
          setTimeout(() => { if (msg.textContent === "set") showMsg(msg, "", ""); }, 3000);
        },
        (e) => {
          showMsg(msg, "err", `${e[0]}: ${e[1]}`, "gateway");
          for (const i of ed.inputs) i.setAttribute("aria-invalid", "true");
          if (ed.instant && p.value !== undefined) ed.set(p.value);
        }).finally(() => { if (button) button.disabled = false; });
    };
    let button = null;
    form.append(ed.el);
    if (ed.instant) {
      ed.inputs[0].addEventListener("change", submit);
    } else {
      button = el("button", "set", "set");
      button.type = "submit";
      button.setAttribute("aria-label", `set ${p.key}`);
      form.append(button);
    }
    form.addEventListener("submit", (e) => { e.preventDefault(); submit(); });
    form.append(msg);
    return form;
  }

  function commandRow(mod, name, a, modLevel) {
    const key = mod.name + ":" + name;
    const tr = el("tr");
    tr.dataset.acc = key;
    if (name.startsWith("_") || userLevel(a.visibility) === "-") tr.classList.add("x");
    const th = el("th", null, name + "()");
    th.scope = "row";
    th.title = a.description || "";
    const out = el("td", "v result");
    out.id = "r:" + key;
    out.setAttribute("aria-live", "polite");
    const ctl = el("td", "c");
    if (!S.readOnly) {
      const di = a.datainfo;
      const form = el("form", "ctl");
      form.noValidate = true;
      form.dataset.acc = key;
      if (userLevel(a.visibility) === "r" || modLevel === "r") form.classList.add("x");
      const ed = di.argument ? editorFor(di.argument, `${key} argument`) : null;
      if (ed) form.append(ed.el);
      const button = el("button", "run", name);
      button.type = "submit";
      button.setAttribute("aria-label", `run ${key}`);
      const msg = el("span", "msg");
      msg.setAttribute("role", "status");
      form.append(button, msg);
      const fmt = di.result ? formatter(di.result) : null;
      form.addEventListener("submit", (e) => {
        e.preventDefault();
        let arg;
        if (ed) {
          const r = ed.read();
          if (r.error) return showMsg(msg, "err", `${r.error[0]}: ${r.error[1]}`, "page");
          arg = r.value;
        }
        showMsg(msg, "", "running…");
        out.classList.remove("err");
        button.disabled = true;
        request("do", key, arg).then(
          (data) => {
            showMsg(msg, "ok", "done");
            out.textContent = fmt && data[0] !== null && data[0] !== undefined ? fmt(data[0]) : "done";
          },
          (e) => {
            showMsg(msg, "err", `${e[0]}: ${e[1]}`, "gateway");
          }).finally(() => { button.disabled = false; });
      });
      ctl.append(form);
    }
    out.colSpan = 2;
    tr.append(th, out, ctl);
    return tr;
  }

  function onIntersect(entries) {
    for (const e of entries) {
      const mod = S.modules.get(e.target.dataset.module);
      if (!mod) continue;
      mod.visible = e.isIntersecting;
      if (mod.visible) S.visible.add(mod); else S.visible.delete(mod);
      if (mod.visible) {
        const fresh = mod.build !== null;
        if (fresh) mod.build();
        for (const p of mod.params) {
          if (p.dirty || (fresh && (p.value !== undefined || p.error))) { p.dirty = true; p.arrival = 0; S.dirty.push(p); }
          if (p.canvas && p.hist.t.length) { p.plotDirty = true; S.plotPending = true; }
        }
        scheduleFrame();
      }
    }
  }

  // ------------------------------------------------------------------ history and plots
  function serverNow() {
    return Date.now() / 1000 + (S.clockOffset || 0);
  }
  function bucket() {
    return S.histWindow / PLOT_POINTS;
  }
  function histAdd(p, t, v) {
    const h = p.hist;
    const n = h.t.length;
    if (n && t < h.t[n - 1]) return;
    if (n >= 2 && t - h.t[n - 2] < bucket() && h.v[n - 1] !== null && v !== null) {
      h.t[n - 1] = t;
      h.v[n - 1] = v;
    } else {
      h.t.push(t);
      h.v.push(v);
    }
    if (h.t.length > PLOT_POINTS * 1.2) trimHist(h, t);
    p.plotDirty = true;
    S.plotPending = true;
  }
  function trimHist(h, now) {
    const from = now - S.histWindow;
    let i = 0;
    while (i < h.t.length && h.t[i] < from) i++;
    if (h.t.length - i > PLOT_POINTS) i = h.t.length - PLOT_POINTS;
    if (i > 0) { h.t.splice(0, i); h.v.splice(0, i); }
  }
  function mergeHistory(p, points) {
    if (!Array.isArray(points)) return;
    const first = p.hist.t.length ? p.hist.t[0] : Infinity;
    const t = [];
    const v = [];
    const b = bucket();
    for (const pt of points) {
      if (!Array.isArray(pt) || typeof pt[0] !== "number" || pt[0] >= first) continue;
      const x = typeof pt[1] === "number" ? (p.di.type === "scaled" ? pt[1] * p.di.scale : pt[1]) : null;
      const n = t.length;
      if (n >= 2 && pt[0] - t[n - 2] < b && v[n - 1] !== null && x !== null) { t[n - 1] = pt[0]; v[n - 1] = x; }
      else { t.push(pt[0]); v.push(x); }
    }
    p.hist.t = t.concat(p.hist.t);
    p.hist.v = v.concat(p.hist.v);
    trimHist(p.hist, serverNow());
    p.plotDirty = true;
    S.plotPending = true;
  }
  function loadHistory() {
    if (!window.fetch) return;
    fetch("/history", { cache: "no-store", credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : null))
      .then((h) => {
        if (!h || typeof h !== "object" || !h.parameters) return;
        if (typeof h.window === "number" && h.window > 0) S.histWindow = h.window;
        if (typeof h.now === "number") S.clockOffset = h.now - Date.now() / 1000;
        S.history = h.parameters;
        for (const [key, points] of Object.entries(h.parameters)) {
          const p = S.params.get(key);
          if (p && p.hist) mergeHistory(p, points);
        }
        scheduleFrame();
      })
      .catch(() => { /* no history on this gateway: live values only */ });
  }
  function drawPlot(p, now) {
    const c = p.canvas;
    const ctx = c.getContext("2d");
    const W = c.width;
    const H = c.height;
    ctx.clearRect(0, 0, W, H);
    const h = p.hist;
    trimHist(h, now);
    const n = h.t.length;
    if (!n) return;
    const t1 = Math.max(now, h.t[n - 1]);
    const t0 = Math.max(t1 - S.histWindow, Math.min(h.t[0], t1 - 60));
    const span = Math.max(t1 - t0, 1e-3);
    let lo = Infinity;
    let hi = -Infinity;
    for (let i = 0; i < n; i++) {
      const v = h.v[i];
      if (v === null || h.t[i] < t0) continue;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    if (lo === Infinity) return;
    if (hi - lo < Math.abs(hi) * 1e-12 + 1e-300) { const d = Math.abs(hi) * 0.01 || 1; lo -= d; hi += d; }
    const dpr = window.devicePixelRatio || 1;
    const pad = 3 * dpr;
    const y = (v) => H - pad - ((v - lo) / (hi - lo)) * (H - 2 * pad);
    const x = (t) => ((t - t0) / span) * (W - 2) + 1;
    ctx.lineWidth = 1.2 * dpr;
    ctx.strokeStyle = "#1f6feb";
    ctx.beginPath();
    let pen = false;
    let lastX = 0;
    let lastY = 0;
    for (let i = 0; i < n; i++) {
      const v = h.v[i];
      if (v === null) { pen = false; continue; }
      if (h.t[i] < t0) continue;
      lastX = x(h.t[i]);
      lastY = y(v);
      if (pen) ctx.lineTo(lastX, lastY); else ctx.moveTo(lastX, lastY);
      pen = true;
    }
    ctx.stroke();
    if (h.v[n - 1] !== null) {
      ctx.fillStyle = "#1f6feb";
      ctx.fillRect(lastX - 1.5 * dpr, lastY - 1.5 * dpr, 3 * dpr, 3 * dpr);
    }
  }

  // ------------------------------------------------------------------ painting
  const channel = new MessageChannel();
  channel.port1.onmessage = () => {
    // runs after the frame that painted S.frameArrivals
    const now = performance.now();
    const list = S.frameArrivals;
    S.frameArrivals = [];
    for (let i = 0; i < list.length; i++) {
      S.lags[S.lagN++ % LAG_SAMPLES] = now - list[i];
    }
    if (S.firstValuePaint === null && list.painted) {
      S.firstValuePaint = now;
      if (performance.mark) performance.mark("secop-first-value");
    }
  };
  function scheduleFrame() {
    if (!S.frame) {
      S.frame = true;
      requestAnimationFrame(frame);
    }
  }
  function paint(p) {
    p.dirty = false;
    let text;
    if (p.error) {
      text = `${p.error[0]}: ${p.error[1]}`;
    } else if (p.value === undefined) {
      return;
    } else if (p.name === "status" && p.mod.statusEl) {
      const v = p.value;
      const code = Array.isArray(v) ? v[0] : null;
      const name = p.statusName ? p.statusName(code) : String(code);
      text = Array.isArray(v) && v[1] ? `${name}: ${v[1]}` : name;
      const cls = statusClass(code);
      if (cls !== p.mod.statusCls) {
        if (p.mod.statusCls) { p.mod.card.classList.remove(p.mod.statusCls); p.mod.statusEl.classList.remove(p.mod.statusCls); }
        if (cls) { p.mod.card.classList.add(cls); p.mod.statusEl.classList.add(cls); }
        p.mod.statusCls = cls;
      }
      if (text !== p.shown) p.mod.statusEl.dataset.code = String(code);
    } else if (p.valueText) {
      text = p.fmt(p.value);
    } else {
      return;   // no row (yet)
    }
    if (text !== p.shown) {
      p.shown = text;
      if (p.valueText) p.valueText.data = text;
      else if (p.mod.statusEl && p.name === "status") p.mod.statusEl.textContent = text;
    }
    const isErr = p.error !== null;
    if (isErr !== p.errShown) {
      p.errShown = isErr;
      (p.valueEl || p.mod.statusEl).classList.toggle("err", isErr);
    }
    if (p.editor && p.editor.pristine && !isErr) p.editor.set(p.value);
  }
  function frame(ts) {
    S.frame = false;
    const list = S.dirty;
    S.dirty = [];
    const arrivals = S.frameArrivals;
    let painted = false;
    for (let i = 0; i < list.length; i++) {
      const p = list[i];
      if (!p.dirty) continue;
      if (!p.mod.visible) { p.arrival = 0; continue; }   // painted when it scrolls into view
      if (p.arrival) arrivals.push(p.arrival);
      paint(p);
      painted = true;
    }
    if (painted) arrivals.painted = true;
    if (S.updates !== S.updatesShown) {
      S.updatesShown = S.updates;
      $("updates").textContent = String(S.updates);
    }
    if (S.plotPending) {
      if (ts - S.lastPlot >= PLOT_PERIOD_MS) {
        S.lastPlot = ts;
        S.plotPending = false;
        const now = serverNow();
        for (const mod of S.visible) {
          for (const p of mod.params) {
            if (p.plotDirty && p.canvas) { p.plotDirty = false; drawPlot(p, now); }
          }
        }
      } else if (!S.plotTimer) {
        // plots still to draw: come back for them
        S.plotTimer = setTimeout(() => { S.plotTimer = null; scheduleFrame(); }, PLOT_PERIOD_MS - (ts - S.lastPlot));
      }
    }
    if (arrivals.length || painted) channel.port2.postMessage(0);
  }

  // ------------------------------------------------------------------ messages
  function onUpdate(spec, data, isError) {
    const p = S.params.get(spec);
    S.updates++;
    if (!p || !Array.isArray(data)) { scheduleFrame(); return; }
    const q = isError ? data[2] : data[1];
    const t = q && typeof q.t === "number" ? q.t : null;
    if (t !== null) {
      const offset = t - Date.now() / 1000;
      if (S.clockOffset === null || offset > S.clockOffset) S.clockOffset = offset;
      S.transport[S.transportN++ % LAG_SAMPLES] = Date.now() - t * 1000;
    }
    if (isError) {
      p.error = [String(data[0]), String(data[1])];
    } else {
      p.value = data[0];
      p.error = null;
      if (p.name === "target_limits" || p.name === "target_min" || p.name === "target_max") applyLimits(p.mod);
    }
    if (p.hist) {
      const v = isError ? null : p.di.type === "scaled" ? data[0] * p.di.scale : data[0];
      histAdd(p, t === null ? serverNow() : t, typeof v === "number" ? v : null);
    }
    if (!p.dirty) {
      p.dirty = true;
      p.arrival = performance.now();
      S.dirty.push(p);
    }
    scheduleFrame();
  }
  // target_limits (or target_min, target_max) narrow the target's input (SECoP 2.0).
  function applyLimits(mod) {
    const target = S.params.get(mod.name + ":target");
    if (!target || !target.editor || !target.editor.limits) return;
    const lim = S.params.get(mod.name + ":target_limits");
    const a = S.params.get(mod.name + ":target_min");
    const b = S.params.get(mod.name + ":target_max");
    let lo = -Infinity;
    let hi = Infinity;
    if (lim && Array.isArray(lim.value) && typeof lim.value[0] === "number" && typeof lim.value[1] === "number") {
      lo = lim.value[0];
      hi = lim.value[1];
    }
    if (a && typeof a.value === "number") lo = Math.max(lo, a.value);
    if (b && typeof b.value === "number") hi = Math.min(hi, b.value);
    target.editor.limits(lo, hi);
  }
  function onMessage(ev) {
    let line = ev.data;
    if (typeof line !== "string") return;
    if (line.charCodeAt(line.length - 1) === 10) line = line.slice(0, -1);
    if (S.phase === "idn") {
      // the first message after *IDN? is its reply, whatever it says
      S.idn = line;
      $("idn").textContent = line;
      S.phase = "describe";
      sendLine("describe");
      return;
    }
    const a = line.indexOf(" ");
    const action = a < 0 ? line : line.slice(0, a);
    const b = a < 0 ? -1 : line.indexOf(" ", a + 1);
    const spec = a < 0 ? "" : b < 0 ? line.slice(a + 1) : line.slice(a + 1, b);
    let data = null;
    if (b >= 0) {
      try { data = JSON.parse(line.slice(b + 1)); } catch (e) { return; }
    }
    switch (action) {
      case "update": onUpdate(spec, data, false); return;
      case "error_update": onUpdate(spec, data, true); return;
      case "describing": onDescribing(line.slice(b + 1), data); return;
      case "active":
        if (spec === "") goLive();
        return;
      case "changed": settle("change " + spec, true, data); return;
      case "done": settle("do " + spec, true, data); return;
      case "error_change": settle("change " + spec, false, data); return;
      case "error_do": settle("do " + spec, false, data); return;
      case "error_closed": S.ws && S.ws.close(); return;
      default:
        if (action.startsWith("error_") && S.phase !== "live") {
          console.warn("secop:", line);
        }
    }
  }
  function onDescribing(text, desc) {
    if (!desc || typeof desc.modules !== "object") return;
    if (text !== S.descText) {
      S.descText = text;
      buildPage(desc);
    }
    S.phase = "activate";
    sendLine("activate");
  }
  function goLive() {
    S.phase = "live";
    S.lives++;
    if (S.firstLive === null) S.firstLive = performance.now();
    clearTimeout(S.watchdog);
    S.backoff = BACKOFF_MIN;
    S.down = false;
    document.body.classList.remove("stale");
    $("state").textContent = "live";
    updateBanner();
  }
  function updateBanner() {
    const banner = $("banner");
    if (S.down) {
      banner.className = "banner";
      banner.textContent = S.desc
        ? "disconnected from the node: values are stale; reconnecting…"
        : "cannot reach the node; retrying…";
      banner.hidden = false;
    } else if (S.readOnly && S.desc) {
      banner.className = "banner ro";
      banner.textContent = S.desc._read_only_view === true
        ? "read-only view: values only, no changes"
        : "read-only access: values only, no changes";
      banner.hidden = false;
    } else {
      banner.hidden = true;
    }
  }

  // ------------------------------------------------------------------ connection
  function connect() {
    S.retry = null;
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (e) {
      scheduleReconnect();
      return;
    }
    S.ws = ws;
    window.secopSocket = ws;
    S.connects++;
    S.phase = "open";
    $("state").textContent = S.lives ? "reconnecting" : "connecting";
    ws.onopen = () => {
      if (S.ws !== ws) return;
      S.phase = "idn";
      $("state").textContent = "open";
      ws.send("*IDN?");
      clearTimeout(S.watchdog);
      S.watchdog = setTimeout(() => { if (S.ws === ws && S.phase !== "live") ws.close(); }, HANDSHAKE_MS);
    };
    ws.onmessage = (ev) => { if (S.ws === ws) onMessage(ev); };
    ws.onclose = (ev) => {
      if (S.ws !== ws) return;
      clearTimeout(S.watchdog);
      S.ws = null;
      S.phase = "closed";
      S.down = true;
      failAllPending();
      document.body.classList.add("stale");
      $("state").textContent = `disconnected (${ev.code})`;
      scheduleReconnect();
    };
  }
  function scheduleReconnect() {
    if (S.retry) return;
    const delay = S.backoff;
    S.backoff = Math.min(S.backoff * 2, BACKOFF_MAX);
    S.retry = setTimeout(connect, delay);
    updateBanner();
  }

  // ------------------------------------------------------------------ start
  function start() {
    const expert = $("expert");
    try { expert.checked = localStorage.getItem("secop-expert") === "1"; } catch (e) { /* storage off */ }
    document.body.classList.toggle("expert", expert.checked);
    expert.addEventListener("change", () => {
      document.body.classList.toggle("expert", expert.checked);
      try { localStorage.setItem("secop-expert", expert.checked ? "1" : "0"); } catch (e) { /* storage off */ }
    });
    loadHistory();
    connect();
  }

  function percentile(arr, n, q) {
    const m = Math.min(n, arr.length);
    if (!m) return null;
    const sorted = Float64Array.from(arr.subarray(0, m)).sort();
    return sorted[Math.min(m - 1, Math.floor(q * m))];
  }
  // For tests and benchmarks (tests/browser/web_client.mjs, scripts/bench/web_client.mjs).
  window.secopClient = {
    get phase() { return S.phase; },
    get idn() { return S.idn; },
    get readOnly() { return S.readOnly; },
    get sent() { return S.sent.slice(); },
    get cspViolations() { return S.csp.slice(); },
    get connects() { return S.connects; },
    stats() {
      return {
        updates: S.updates,
        painted: Math.min(S.lagN, LAG_SAMPLES),
        lagP50: percentile(S.lags, S.lagN, 0.5),
        lagP99: percentile(S.lags, S.lagN, 0.99),
        lagMax: percentile(S.lags, S.lagN, 1),
        transportP50: percentile(S.transport, S.transportN, 0.5),
        transportP99: percentile(S.transport, S.transportN, 0.99),
        firstValuePaint: S.firstValuePaint,
        firstLive: S.firstLive,
        modules: S.modules.size,
        parameters: S.params.size,
      };
    },
    resetStats() { S.lagN = 0; S.transportN = 0; S.updates = 0; },
    historyLength(key) { const p = S.params.get(key); return p && p.hist ? p.hist.t.length : null; },
    historyOldest(key) { const p = S.params.get(key); return p && p.hist && p.hist.t.length ? p.hist.t[0] : null; },
  };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
