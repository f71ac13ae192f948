// A page from another local origin attacks the gateway through headless Chromium (Debian's
// /usr/bin/chromium; playwright-core never downloads a browser); prints one JSON object
// with what the page saw, what the browser saw on the network, and the console.
//
//   node attack_page.mjs GATEWAY_PORT [--attacker-port N] [--screenshot FILE]
//                        [--timeout SECONDS]
//
// The attacker page is served by a tiny HTTP server started here on 127.0.0.1 (port N,
// 0 = any free port), so its origin is http://127.0.0.1:N, never the gateway's. For each
// gateway host, 127.0.0.1:GATEWAY_PORT and localhost:GATEWAY_PORT, the page tries:
//   fetch         POST / with SECoP lines as body: mode no-cors, no-cors with
//                 Content-Type text/plain, and mode cors (a "simple" request: no preflight)
//   form          an auto-submitted <form method=POST enctype=text/plain> into an iframe,
//                 whose field name carries the SECoP lines (name="x\nchange T:target 123\n...")
//   img, script   <img src> and <script src> at / and /metrics (plain GETs)
//   websocket     new WebSocket(ws://HOST/) that, once open, sends `change T:target 123`
//                 and `do io:communicate "VAL 7"`
// Every attempt ends (settles, errors, or times out after --timeout) and is reported in
// window.attack; the result has `attempts` (the page's view), `network` (requests to the
// gateway with their HTTP status as Chromium saw it), `websockets` (Playwright's view of
// the sockets) and `console`.
//
// Exit status: 0 the run completed (the caller judges the result), 2 the run itself broke.

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
// What an attacker wants the gateway to execute: a junk first line (the end of whatever
// came before), a change and a do.
const SECOP_LINES = 'x\nchange T:target 123\ndo io:communicate "VAL 7"\n';

function parseArgs(argv) {
  const args = { gatewayPort: 0, attackerPort: 0, screenshot: null, timeout: 15 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--attacker-port') args.attackerPort = Number(value());
    else if (a === '--screenshot') args.screenshot = value();
    else if (a === '--timeout') args.timeout = Number(value());
    else if (!args.gatewayPort && /^\d+$/.test(a)) args.gatewayPort = Number(a);
    else throw new Error(`unknown argument ${a}`);
  }
  if (!args.gatewayPort) throw new Error('usage: node attack_page.mjs GATEWAY_PORT [options]');
  return args;
}

// The attacker page: runs every attempt at once, shows and reports the outcomes.
function attackPage(gatewayPort, timeoutMs) {
  const config = { hosts: [`127.0.0.1:${gatewayPort}`, `localhost:${gatewayPort}`],
                   body: SECOP_LINES, timeoutMs };
  return `<!doctype html><html><head><meta charset="utf-8"><title>attacker page</title>
<style>body{font:13px sans-serif}td{border:1px solid #999;padding:2px 6px}</style></head>
<body><h1>attacker page (another origin)</h1><p id="state">running</p>
<table id="results"><tr><td>host</td><td>attempt</td><td>outcome</td></tr></table>
<div id="sinks"></div>
<script>
"use strict";
const config = ${JSON.stringify(config)};
window.attack = { origin: location.origin, attempts: [], done: false };

// Every attempt resolves, at the latest after config.timeoutMs.
function attempt(host, kind, run) {
  const entry = { host, kind, outcome: 'pending' };
  window.attack.attempts.push(entry);
  const row = document.getElementById('results').insertRow();
  row.insertCell().textContent = host;
  row.insertCell().textContent = kind;
  const cell = row.insertCell();
  return new Promise((resolve) => {
    let settled = false;
    const finish = (outcome, extra) => {
      if (settled) return;
      settled = true;
      entry.outcome = outcome;
      Object.assign(entry, extra || {});
      cell.textContent = outcome;
      resolve(entry);
    };
    setTimeout(() => finish('timeout'), config.timeoutMs);
    try { run(finish, entry); } catch (e) { finish('threw: ' + e); }
  });
}

function fetchAttempt(host, kind, init) {
  return attempt(host, kind, (finish) => {
    fetch('http://' + host + '/', Object.assign({ method: 'POST', body: config.body, cache: 'no-store' }, init))
      .then(async (r) => {
        let text = null;
        try { text = await r.text(); } catch (e) { /* opaque */ }
        finish('resolved', { type: r.type, status: r.status, readable: r.type !== 'opaque', text });
      })
      .catch((e) => finish('rejected', { error: String(e) }));
  });
}

function formAttempt(host, index) {
  return attempt(host, 'form POST text/plain', (finish) => {
    const name = 'sink' + index;
    const frame = document.createElement('iframe');
    frame.name = name;
    frame.width = 420;
    frame.height = 60;
    document.getElementById('sinks').appendChild(frame);
    const form = document.createElement('form');
    form.method = 'POST';
    form.enctype = 'text/plain';
    form.action = 'http://' + host + '/';
    form.target = name;
    const field = document.createElement('input');
    field.type = 'hidden';
    field.name = config.body;     // body: "x\\nchange T:target 123\\n...\\n=" (CRLF-normalised)
    field.value = '';
    form.appendChild(field);
    document.body.appendChild(form);
    frame.addEventListener('load', () => finish('frame loaded'), { once: true });
    form.submit();
  });
}

function elementAttempt(host, tag, path) {
  return attempt(host, tag + ' GET ' + path, (finish) => {
    const el = document.createElement(tag);
    el.onload = () => finish('load');
    el.onerror = () => finish('error');
    el.src = 'http://' + host + path;
    (tag === 'img' ? document.body : document.head).appendChild(el);
  });
}

function websocketAttempt(host) {
  return attempt(host, 'WebSocket /', (finish, entry) => {
    entry.opened = false;
    entry.error = false;
    entry.sent = [];
    entry.messages = [];
    const ws = new WebSocket('ws://' + host + '/');
    ws.onopen = () => {
      entry.opened = true;
      for (const line of ['change T:target 123', 'do io:communicate "VAL 7"']) {
        ws.send(line);
        entry.sent.push(line);
      }
      setTimeout(() => ws.close(), 500);
    };
    ws.onmessage = (e) => entry.messages.push(String(e.data));
    ws.onerror = () => { entry.error = true; };
    ws.onclose = (e) => finish(entry.opened ? 'opened, then closed' : 'closed without opening',
                               { closeCode: e.code });
  });
}

const all = [];
config.hosts.forEach((host, i) => {
  all.push(fetchAttempt(host, 'fetch POST no-cors', { mode: 'no-cors' }));
  all.push(fetchAttempt(host, 'fetch POST no-cors text/plain',
                        { mode: 'no-cors', headers: { 'Content-Type': 'text/plain' } }));
  all.push(fetchAttempt(host, 'fetch POST cors', { mode: 'cors' }));
  all.push(formAttempt(host, i));
  for (const p of ['/', '/metrics']) {
    all.push(elementAttempt(host, 'img', p));
    all.push(elementAttempt(host, 'script', p));
  }
  all.push(websocketAttempt(host));
});
Promise.all(all).then(() => {
  window.attack.done = true;
  document.getElementById('state').textContent = 'done';
});
</script></body></html>`;
}

function startAttacker(port, html) {
  const server = http.createServer((req, res) => {
    if (req.url !== '/') {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(html);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const timeoutMs = args.timeout * 1000;
  const gatewayHosts = [`127.0.0.1:${args.gatewayPort}`, `localhost:${args.gatewayPort}`];
  const result = { ok: false, gatewayPort: args.gatewayPort, attempts: [], network: [],
                   websockets: [], console: [], failures: [] };
  const toGateway = (url) => {
    try {
      const u = new URL(url);
      return gatewayHosts.includes(u.host);
    } catch (e) {
      return false;
    }
  };

  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'secop-chromium-'));
  let context = null;
  let server = null;
  // Every wait below is bounded; this is the last resort.
  const watchdog = setTimeout(() => {
    result.failures.push(`watchdog: no result within ${4 * args.timeout} s`);
    console.log(JSON.stringify(result, null, 2));
    process.exit(2);
  }, 4 * timeoutMs);
  watchdog.unref();
  try {
    server = await startAttacker(args.attackerPort, attackPage(args.gatewayPort, timeoutMs));
    const attackerUrl = `http://127.0.0.1:${server.address().port}/`;
    result.attackerUrl = attackerUrl;

    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      timeout: timeoutMs,
      viewport: { width: 1000, height: 900 },
      args: [
        '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ],
    });
    context.setDefaultTimeout(timeoutMs);
    result.browser = context.browser()?.version() ?? null;

    // What Chromium sent to the gateway and what came back (iframes included).
    context.on('response', (r) => {
      const q = r.request();
      if (toGateway(q.url())) result.network.push({ method: q.method(), url: q.url(), status: r.status() });
    });
    context.on('requestfailed', (q) => {
      if (toGateway(q.url())) {
        result.network.push({ method: q.method(), url: q.url(), failed: q.failure()?.errorText ?? true });
      }
    });
    const page = context.pages()[0] ?? await context.newPage();
    page.on('console', (m) => result.console.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => result.console.push(`pageerror: ${e.message}`));
    page.on('websocket', (ws) => {
      const entry = { url: ws.url(), sent: [], received: [], error: null, closed: false };
      result.websockets.push(entry);
      ws.on('framesent', (f) => entry.sent.push(String(f.payload)));
      ws.on('framereceived', (f) => entry.received.push(String(f.payload)));
      ws.on('socketerror', (e) => { entry.error = String(e); });
      ws.on('close', () => { entry.closed = true; });
    });

    const response = await page.goto(attackerUrl, { waitUntil: 'load' });
    result.attackerStatus = response && response.status();
    try {
      await page.waitForFunction(() => window.attack && window.attack.done, null,
                                 { timeout: 2 * timeoutMs, polling: 50 });
    } catch (e) {
      result.failures.push(`attack page not done within ${2 * args.timeout} s`);
    }
    const attack = await page.evaluate(() => window.attack);
    result.origin = attack.origin;
    result.attempts = attack.attempts;
    result.done = attack.done;
    if (args.screenshot) {
      await page.screenshot({ path: args.screenshot, fullPage: true });
      result.screenshot = args.screenshot;
    }
    result.ok = result.failures.length === 0;
  } catch (e) {
    result.failures.push(`run broke: ${e.stack || e}`);
    result.broken = true;
  } finally {
    if (context) await context.close().catch(() => {});
    if (server) server.close();
    // Chromium's helper processes may still write into the profile as it closes:
    // retry, and never let the clean-up of a temporary folder fail the check.
    try {
      fs.rmSync(userDataDir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
    } catch (e) {
      console.error(`could not remove ${userDataDir}: ${e}`);
    }
  }
  console.log(JSON.stringify(result, null, 2));
  process.exit(result.broken ? 2 : 0);
}

main().catch((e) => {
  console.log(JSON.stringify({ ok: false, failures: [`run broke: ${e.stack || e}`] }));
  process.exit(2);
});
