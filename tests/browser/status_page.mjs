// Drives headless Chromium (Debian's /usr/bin/chromium; playwright-core never downloads a
// browser) against a running secop-gateway and prints one JSON object with the results.
//
//   node status_page.mjs http://127.0.0.1:PORT/ [--screenshot FILE] [--other-origin-port N]
//                        [--other-origin allowed|refused] [--timeout SECONDS]
//
// Checks:
//   status page   the page at / (the web client, web/; tests/browser/web_client.mjs checks it
//                 in depth) loads; #state becomes "live" (its own WebSocket got `active`); #updates > 0;
//                 #idn shows the IDN reply; a value cell changes; window.secopSocket is open
//   page socket   a new WebSocket opened by a script of the page gets the *IDN? reply,
//                 the describing reply to describe, and updates plus `active` to activate;
//                 no message ends with LF
//   other origin  a page served from another origin (http://127.0.0.1:<other port>, a tiny
//                 server started here) opens ws://<gateway>/ws: it must fail (error/close,
//                 never open) with --other-origin refused (default), or work with allowed
//
// Exit status: 0 all checks passed, 1 a check failed, 2 the run itself broke.

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const IDN = 'ISSE,SECoP,,v2.0';

function parseArgs(argv) {
  const args = { url: null, screenshot: null, otherOriginPort: 0, otherOrigin: 'refused', timeout: 15 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--screenshot') args.screenshot = value();
    else if (a === '--other-origin-port') args.otherOriginPort = Number(value());
    else if (a === '--other-origin') args.otherOrigin = value();
    else if (a === '--timeout') args.timeout = Number(value());
    else if (!args.url && !a.startsWith('--')) args.url = a;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!args.url) throw new Error('usage: node status_page.mjs http://127.0.0.1:PORT/ [options]');
  if (!['allowed', 'refused'].includes(args.otherOrigin)) throw new Error('--other-origin allowed|refused');
  return args;
}

// The "other origin": a page whose script tries to open the gateway's WebSocket.
function otherOriginPage(wsUrl) {
  return `<!doctype html><html><head><meta charset="utf-8"><title>other origin</title></head>
<body><p id="out">trying</p><script>
"use strict";
window.wsResult = { opened: false, error: false, closeCode: null, messages: [], done: false };
const r = window.wsResult;
const ws = new WebSocket(${JSON.stringify(wsUrl)});
ws.onopen = () => { r.opened = true; ws.send("*IDN?"); };
ws.onmessage = (e) => { r.messages.push(e.data); ws.close(); };
ws.onerror = () => { r.error = true; };
ws.onclose = (e) => { r.closeCode = e.code; r.done = true; document.getElementById("out").textContent = "done"; };
</script></body></html>`;
}

function startOtherOrigin(port, wsUrl) {
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(otherOriginPage(wsUrl));
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const timeoutMs = args.timeout * 1000;
  const gateway = new URL(args.url);
  const wsUrl = `ws://${gateway.host}/ws`;
  const result = { ok: false, url: args.url, checks: {}, failures: [], console: [] };
  const check = (name, passed, detail) => {
    result.checks[name] = { passed: Boolean(passed), detail };
    if (!passed) result.failures.push(`${name}: ${JSON.stringify(detail)}`);
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
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      timeout: timeoutMs,
      viewport: { width: 1000, height: 760 },
      args: [
        '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ],
    });
    context.setDefaultTimeout(timeoutMs);
    result.browser = context.browser()?.version() ?? null;

    // --- the status page, served by the gateway
    const page = context.pages()[0] ?? await context.newPage();
    page.on('console', (m) => result.console.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => result.console.push(`pageerror: ${e.message}`));
    const response = await page.goto(args.url, { waitUntil: 'load' });
    check('status page loads', response && response.status() === 200, response && response.status());

    const waitFor = async (name, fn, arg) => {
      try {
        await page.waitForFunction(fn, arg, { timeout: timeoutMs, polling: 50 });
        return true;
      } catch (e) {
        check(name, false, `not within ${args.timeout} s: ${e.message.split('\n')[0]}`);
        return false;
      }
    };
    if (await waitFor('state live', () => document.getElementById('state').textContent === 'live')) {
      check('state live', true, 'live');
    }
    if (await waitFor('updates counted', () => Number(document.getElementById('updates').textContent) > 0)) {
      check('updates counted', true, await page.textContent('#updates'));
    }
    const idnShown = await page.textContent('#idn');
    check('page shows IDN', idnShown === IDN, idnShown);
    const cells = await page.$$eval('td[id^="v:"]', (tds) => Object.fromEntries(tds.map((td) => [td.id, td.textContent])));
    check('value cells present', Object.keys(cells).length > 0 && 'v:T:value' in cells, Object.keys(cells));
    if (await waitFor('a value cell changes', (before) => [...document.querySelectorAll('td[id^="v:"]')]
      .some((td) => td.id in before && td.textContent !== before[td.id]), cells)) {
      const changed = await page.$$eval('td[id^="v:"]', (tds, before) => tds
        .filter((td) => td.textContent !== before[td.id]).map((td) => `${td.id}: ${before[td.id]} -> ${td.textContent}`), cells);
      check('a value cell changes', true, changed.slice(0, 3));
    }
    const readyState = await page.evaluate(() => window.secopSocket && window.secopSocket.readyState);
    check('page socket open', readyState === 1, readyState);
    if (args.screenshot) {
      await page.screenshot({ path: args.screenshot, fullPage: true });
      result.screenshot = args.screenshot;
    }

    // --- a WebSocket opened by a script of the page (same origin)
    const own = await page.evaluate(({ timeoutMs }) => new Promise((resolve) => {
      const r = { opened: false, idn: null, describing: null, updates: 0, active: false,
                  withLF: [], errors: 0, closeCode: null, timedOut: false };
      const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
      const finish = () => { clearTimeout(timer); ws.close(); resolve(r); };
      const timer = setTimeout(() => { r.timedOut = true; finish(); }, timeoutMs);
      ws.onopen = () => { r.opened = true; ws.send('*IDN?'); };
      ws.onerror = () => { r.errors += 1; };
      ws.onclose = (e) => { r.closeCode = e.code; clearTimeout(timer); resolve(r); };
      ws.onmessage = (e) => {
        const line = e.data;
        if (line.endsWith('\n')) r.withLF.push(line);
        if (line.startsWith('ISSE')) {
          r.idn = line;
          ws.send('describe');
        } else if (line.startsWith('describing ')) {
          const rest = line.slice('describing '.length);
          const json = JSON.parse(rest.slice(rest.indexOf(' ') + 1));
          r.describing = { specifier: rest.slice(0, rest.indexOf(' ')), equipment_id: json.equipment_id,
                           modules: Object.keys(json.modules) };
          ws.send('activate');
        } else if (line.startsWith('update ')) {
          r.updates += 1;
        } else if (line === 'active') {
          r.active = true;
        }
        if (r.active && r.updates > 0) finish();
      };
    }), { timeoutMs });
    result.pageSocket = own;
    check('page socket opens', own.opened, own);
    check('page socket IDN', own.idn === IDN, own.idn);
    check('page socket describing', own.describing && own.describing.specifier === '.'
      && own.describing.modules.includes('T'), own.describing);
    check('page socket updates and active', own.active && own.updates > 0, { active: own.active, updates: own.updates });
    check('no LF in WebSocket messages', own.withLF.length === 0, own.withLF.slice(0, 3));

    // --- a page from another origin tries the gateway's WebSocket
    server = await startOtherOrigin(args.otherOriginPort, wsUrl);
    const otherUrl = `http://127.0.0.1:${server.address().port}/`;
    result.otherOrigin = { url: otherUrl, expect: args.otherOrigin };
    const other = await context.newPage();
    other.on('console', (m) => result.console.push(`other origin ${m.type()}: ${m.text()}`));
    await other.goto(otherUrl, { waitUntil: 'load' });
    try {
      await other.waitForFunction(() => window.wsResult && window.wsResult.done, null, { timeout: timeoutMs, polling: 50 });
    } catch (e) {
      // still waiting: neither refused nor closed
    }
    const wsResult = await other.evaluate(() => window.wsResult);
    result.otherOrigin.result = wsResult;
    if (args.otherOrigin === 'refused') {
      check('other origin refused', wsResult.done && !wsResult.opened && wsResult.messages.length === 0, wsResult);
    } else {
      check('other origin allowed', wsResult.opened && wsResult.messages[0] === IDN, wsResult);
    }
    // ... while the same-origin status page still works
    const stillOpen = await page.evaluate(() => window.secopSocket.readyState);
    check('status page socket still open', stillOpen === 1, stillOpen);

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
  process.exit(result.ok ? 0 : result.broken ? 2 : 1);
}

main().catch((e) => {
  console.log(JSON.stringify({ ok: false, failures: [`run broke: ${e.stack || e}`] }));
  process.exit(2);
});
