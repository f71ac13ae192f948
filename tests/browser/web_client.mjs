// Drives the gateway's built-in web client (GET /, web/app.js) in headless Chromium
// (Debian's /usr/bin/chromium through playwright-core) and prints one JSON object with
// the results. Run by tests/python/test_web_client.py.
//
//   node web_client.mjs http://127.0.0.1:PORT/ --scenario NAME [--shots DIR] [--idn TEXT]
//                       [--timeout SECONDS]
//
// Scenarios:
//   main       every module of the default config with units and formatted values; T:target
//              changed with the keyboard (BUSY, then IDLE); an out-of-range value refused by
//              the page (nothing sent) and, with the input's limit removed from the DOM, by
//              the gateway (its RangeError inline); io:communicate (expert switch) answers;
//              stop on the Drivable T ends a ramp
//   reconnect  live; prints "@@ kill" and waits for a line on stdin (the test kills the
//              gateway); the page shows disconnected and stale values; prints "@@ restart"
//              and waits again (the test restarts it on the same port); live again with
//              fresh values
//   readonly   live, values shown, no control anywhere (a read-only view or client)
//   live       live; the identification line shown is --idn (a custom one); with
//              --fake-history, GET /history is answered here (an hour of T:value with a
//              gap) and the plot of T:value must show it
// Every scenario: no request to another origin (the browser's request and WebSocket log),
// no Content-Security-Policy violation, no script error. Screenshots go to --shots.
//
// Exit status: 0 all checks passed, 1 a check failed, 2 the run itself broke.

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

function parseArgs(argv) {
  const args = { url: null, scenario: 'main', shots: null, idn: null, timeout: 20, fakeHistory: false, historyBefore: 0 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--scenario') args.scenario = value();
    else if (a === '--shots') args.shots = value();
    else if (a === '--idn') args.idn = value();
    else if (a === '--fake-history') args.fakeHistory = true;
    else if (a === '--history-before') args.historyBefore = Number(value());
    else if (a === '--timeout') args.timeout = Number(value());
    else if (!args.url && !a.startsWith('--')) args.url = a;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!args.url) throw new Error('usage: node web_client.mjs http://127.0.0.1:PORT/ --scenario NAME');
  return args;
}

const lines = readline.createInterface({ input: process.stdin });
const stdinLines = [];
let stdinWaiter = null;
lines.on('line', (l) => {
  if (stdinWaiter) { const w = stdinWaiter; stdinWaiter = null; w(l); } else stdinLines.push(l);
});
function askDriver(what, timeoutMs) {
  process.stdout.write(`@@ ${what}\n`);
  if (stdinLines.length) return Promise.resolve(stdinLines.shift());
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => { stdinWaiter = null; reject(new Error(`no answer to ${what}`)); }, timeoutMs);
    stdinWaiter = (l) => { clearTimeout(t); resolve(l); };
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const timeoutMs = args.timeout * 1000;
  const gateway = new URL(args.url);
  const result = { ok: false, url: args.url, scenario: args.scenario, checks: {}, failures: [],
                   console: [], requests: [], screenshots: [] };
  const check = (name, passed, detail) => {
    result.checks[name] = { passed: Boolean(passed), detail };
    if (!passed) result.failures.push(`${name}: ${JSON.stringify(detail)}`);
  };
  if (args.shots) fs.mkdirSync(args.shots, { recursive: true });

  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'secop-chromium-'));
  let context = null;
  const watchdog = setTimeout(() => {
    result.failures.push(`watchdog: no result within ${8 * args.timeout} s`);
    console.log(JSON.stringify(result, null, 2));
    process.exit(2);
  }, 8 * timeoutMs);
  watchdog.unref();
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      timeout: timeoutMs,
      viewport: { width: 1280, height: 900 },
      args: [
        '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ],
    });
    context.setDefaultTimeout(timeoutMs);
    result.browser = context.browser()?.version() ?? null;
    const page = context.pages()[0] ?? await context.newPage();
    page.on('console', (m) => result.console.push(`${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => result.console.push(`pageerror: ${e.message}`));
    page.on('request', (r) => result.requests.push(r.url()));
    page.on('websocket', (ws) => result.requests.push(ws.url()));
    // Without the gateway's history, GET /history is 404: allowed (the page plots live values).
    const failed = [];
    page.on('response', (r) => { if (r.status() >= 400) failed.push({ url: r.url(), status: r.status() }); });

    const shot = async (name) => {
      if (!args.shots) return;
      const file = path.join(args.shots, `${name}.png`);
      await page.screenshot({ path: file, fullPage: true });
      result.screenshots.push(file);
    };
    const waitFor = async (name, fn, arg, ms = timeoutMs) => {
      try {
        await page.waitForFunction(fn, arg, { timeout: ms, polling: 50 });
        return true;
      } catch (e) {
        check(name, false, `not within ${ms / 1000} s: ${e.message.split('\n')[0]}`);
        return false;
      }
    };
    const text = (sel) => page.evaluate((s) => { const e = document.querySelector(s); return e ? e.textContent : null; }, sel);
    const valueOf = (key) => text(`[id="v:${key}"]`);
    const waitLive = () => waitFor('page goes live', () => document.getElementById('state').textContent === 'live'
      && window.secopClient && window.secopClient.phase === 'live');

    if (args.fakeHistory) {
      // the gateway's GET /history, as it answers when history is on
      await page.route('**/history', (route) => {
        const now = Date.now() / 1000;
        const points = [];
        for (let i = 0; i < 3600; i += 5) points.push([now - 3600 + i, i > 1800 && i < 2000 ? null : 290 + 5 * Math.sin(i / 300)]);
        route.fulfill({ status: 200, contentType: 'application/json',
          body: JSON.stringify({ window: 3600, resolution: 1.0, now, parameters: { 'T:value': points } }) });
      });
    }
    const response = await page.goto(args.url, { waitUntil: 'load' });
    check('page loads', response && response.status() === 200, response && response.status());
    const csp = response && response.headers()['content-security-policy'];
    check('page has a CSP', csp && csp.includes("default-src 'none'") && csp.includes("connect-src 'self'"), csp);
    if (await waitLive()) check('page goes live', true, await page.textContent('#idn'));

    if (args.scenario === 'main') await scenarioMain({ page, check, waitFor, text, valueOf, shot });
    else if (args.scenario === 'reconnect') await scenarioReconnect({ page, check, waitFor, waitLive, valueOf, shot, timeoutMs });
    else if (args.scenario === 'readonly') await scenarioReadOnly({ page, check, waitFor, valueOf, shot });
    else if (args.scenario === 'live') await scenarioLive({ page, check, waitFor, valueOf, shot, idn: args.idn, fakeHistory: args.fakeHistory, historyBefore: args.historyBefore });
    else throw new Error(`unknown scenario ${args.scenario}`);

    // --- every scenario: same origin only, no CSP violation, no script error
    const origin = gateway.origin;
    const foreign = result.requests.filter((u) => {
      const x = new URL(u);
      const asHttp = x.protocol === 'ws:' ? 'http:' : x.protocol === 'wss:' ? 'https:' : x.protocol;
      return `${asHttp}//${x.host}` !== origin;
    });
    check('same origin only', result.requests.length > 0 && foreign.length === 0, { foreign, all: result.requests.length });
    check('WebSocket used', result.requests.some((u) => u.startsWith(`ws://${gateway.host}/ws`)), result.requests);
    const violations = await page.evaluate(() => window.secopClient.cspViolations);
    check('no CSP violation', violations.length === 0, violations);
    const noHistory = failed.filter((f) => new URL(f.url).pathname === '/history' && f.status === 404).length;
    result.failedResponses = failed;
    let tolerated = noHistory;
    const errors = result.console.filter((l) => l.startsWith('pageerror') || l.startsWith('error'))
      .filter((l) => !(tolerated > 0 && /Failed to load resource: .* 404/.test(l) && tolerated--));
    check('no failed request but /history', failed.length === noHistory, failed);
    const expectedErrors = args.scenario === 'reconnect'
      ? errors.filter((l) => !/WebSocket|ERR_CONNECTION_REFUSED|net::/.test(l)) : errors;
    check('no script errors', expectedErrors.length === 0, expectedErrors);
    result.stats = await page.evaluate(() => window.secopClient.stats());
    result.ok = result.failures.length === 0;
  } catch (e) {
    result.failures.push(`run broke: ${e.stack || e}`);
    result.broken = true;
  } finally {
    if (context) await context.close().catch(() => {});
    lines.close();
    try {
      fs.rmSync(userDataDir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
    } catch (e) {
      console.error(`could not remove ${userDataDir}: ${e}`);
    }
  }
  console.log(JSON.stringify(result, null, 2));
  process.exit(result.ok ? 0 : result.broken ? 2 : 1);
}

// The module's status code, from its badge.
const statusCode = (page, module) => page.evaluate((m) => {
  const e = document.getElementById(`v:${m}:status`);
  return e && e.dataset.code !== undefined ? Number(e.dataset.code) : null;
}, module);

// Record every status code a module's badge shows, from now on.
const recordStatus = (page, module) => page.evaluate((m) => {
  const e = document.getElementById(`v:${m}:status`);
  window.statusSeen = window.statusSeen || {};
  const seen = window.statusSeen[m] = [];
  new MutationObserver(() => { seen.push(Number(e.dataset.code)); }).observe(e, { attributes: true, childList: true, characterData: true, subtree: true });
}, module);

async function setValue(page, key, value, { keyboard = false } = {}) {
  const input = page.locator(`form[data-acc="${key}"] input`).first();
  await input.fill(String(value));
  if (keyboard) {
    await input.focus();
    await page.keyboard.press('Enter');
  } else {
    await page.locator(`form[data-acc="${key}"] button[type=submit]`).click();
  }
}

async function scenarioMain({ page, check, waitFor, text, valueOf, shot }) {
  // --- every module, units, formatted values
  const modules = await page.$$eval('section.module', (s) => s.map((e) => e.dataset.module));
  check('every module listed', ['T', 'p', 'ps', 'io'].every((m) => modules.includes(m)), modules);
  const ioHidden = await page.evaluate(() => getComputedStyle(document.getElementById('m:io')).display === 'none');
  check('expert module hidden by default', ioHidden, ioHidden);
  const keys = ['T:value', 'T:target', 'T:ramp', 'T:target_limits', 'p:value', 'p:_fault', 'ps:value', 'ps:mode', 'ps:_limits'];
  await waitFor('values painted', (ks) => ks.every((k) => {
    const e = document.getElementById(`v:${k}`);
    return e && e.textContent !== '';
  }), keys);
  const shown = {};
  for (const k of keys) shown[k] = await valueOf(k);
  {
    check('double with fmtstr %.3f and unit', /^-?\d+\.\d{3} K$/.test(shown['T:value']), shown['T:value']);
    check('double with fmtstr %.3e and unit', /^\d\.\d{3}e-\d\d mbar$/.test(shown['p:value']), shown['p:value']);
    check('double without fmtstr', /^\d+(\.\d+)? K\/min$/.test(shown['T:ramp']), shown['T:ramp']);
    check('enum by member name', ['off', 'constant_voltage', 'constant_current'].includes(shown['ps:mode']), shown['ps:mode']);
    check('bool', ['true', 'false'].includes(shown['p:_fault']), shown['p:_fault']);
    check('tuple with units', /^\(\d+\.\d{3} K, \d+\.\d{3} K\)$/.test(shown['T:target_limits']), shown['T:target_limits']);
    check('struct with units', /^\{voltage: \d+\.\d{3} V, current: \d+\.\d{3} A\}$/.test(shown['ps:_limits']), shown['ps:_limits']);
  }
  const status = { T: await text('[id="v:T:status"]'), p: await text('[id="v:p:status"]'), ps: await text('[id="v:ps:status"]') };
  check('status by name and text', /^IDLE/.test(status.T) && /^(IDLE|ERROR)/.test(status.p) && /^(DISABLED|IDLE|WARN)/.test(status.ps), status);
  const stClass = await page.evaluate(() => document.getElementById('v:T:status').className);
  check('status coloured by class', stClass.includes('st-idle'), stClass);
  check('readonly parameter has no control', await page.locator('form[data-acc="T:value"]').count() === 0, 'T:value');
  await page.check('#expert');
  await waitFor('expert switch shows io', () => getComputedStyle(document.getElementById('m:io')).display !== 'none');
  await waitFor('expert parameters painted', () => document.getElementById('v:T:_heater_power').textContent.endsWith(' W'));
  await shot('overview');

  // --- change T:target with the keyboard: BUSY, then IDLE
  const before = parseFloat(await valueOf('T:target'));
  const step = before < 399 ? 0.5 : -0.5;
  const wanted = Math.round((before + step) * 1000) / 1000;
  await recordStatus(page, 'T');
  await setValue(page, 'T:target', wanted, { keyboard: true });
  const changed = await waitFor('target changed', (w) => parseFloat(document.getElementById('v:T:target').textContent) === w, wanted);
  if (changed) check('target changed', true, await valueOf('T:target'));
  const busy = await waitFor('status BUSY after the change', () => (window.statusSeen.T || []).some((c) => c >= 300 && c < 400)
    || (Number(document.getElementById('v:T:status').dataset.code) >= 300 && Number(document.getElementById('v:T:status').dataset.code) < 400));
  if (busy) {
    check('status BUSY after the change', true, await page.evaluate(() => window.statusSeen.T));
    await shot('target-busy');
  }
  const idle = await waitFor('status IDLE again', () => {
    const c = Number(document.getElementById('v:T:status').dataset.code);
    return c >= 100 && c < 200;
  }, null, 30000);
  if (idle) check('status IDLE again', true, await page.textContent('[id="v:T:status"]'));
  await shot('target-idle');

  // --- out of range: the page refuses it, nothing is sent
  const targetNow = await valueOf('T:target');
  const sentBefore = (await page.evaluate(() => window.secopClient.sent)).length;
  await setValue(page, 'T:target', 1000);
  const msgSel = 'form[data-acc="T:target"] .msg';
  await waitFor('page refuses out of range', (s) => /RangeError/.test(document.querySelector(s).textContent), msgSel);
  const pageMsg = await page.evaluate((s) => ({ text: document.querySelector(s).textContent, source: document.querySelector(s).dataset.source }), msgSel);
  const sentAfter = await page.evaluate(() => window.secopClient.sent);
  check('page refuses out of range', pageMsg.source === 'page' && /RangeError/.test(pageMsg.text), pageMsg);
  check('nothing sent for a refused value', !sentAfter.slice(sentBefore).some((l) => l.startsWith('change T:target')), sentAfter.slice(sentBefore));
  const invalid = await page.getAttribute('form[data-acc="T:target"] input', 'aria-invalid');
  check('field marked invalid', invalid === 'true', invalid);
  await shot('range-page');

  // --- the page's limit relaxed in the DOM: the gateway refuses it, inline
  await page.evaluate(() => {
    const i = document.querySelector('form[data-acc="T:target"] input');
    i.removeAttribute('max');
  });
  await setValue(page, 'T:target', 1000);
  await waitFor('gateway RangeError inline', (s) => document.querySelector(s).dataset.source === 'gateway', msgSel);
  const gwMsg = await page.evaluate((s) => ({ text: document.querySelector(s).textContent, source: document.querySelector(s).dataset.source }), msgSel);
  check('gateway RangeError inline', /^RangeError: /.test(gwMsg.text) && gwMsg.source === 'gateway', gwMsg);
  const sentBypass = await page.evaluate(() => window.secopClient.sent);
  check('bypassed value was sent', sentBypass.includes('change T:target 1000'), sentBypass.slice(-5));
  await page.waitForTimeout(300);
  check('refused value changed nothing', await valueOf('T:target') === targetNow, { before: targetNow, after: await valueOf('T:target') });
  await shot('range-gateway');

  // --- io:communicate
  await page.fill('form[data-acc="io:communicate"] input', '*IDN?');
  await page.click('form[data-acc="io:communicate"] button');
  const answered = await waitFor('io:communicate answers', () => document.getElementById('r:io:communicate').textContent === 'SIMULATED,SCPI-INSTRUMENT,0,1.0');
  if (answered) check('io:communicate answers', true, await text('[id="r:io:communicate"]'));
  await shot('communicate');

  // --- stop on the Drivable T: a long ramp, stopped
  const start = parseFloat(await valueOf('T:target'));
  const far = start < 300 ? start + 50 : start - 50;
  await recordStatus(page, 'T');
  await setValue(page, 'T:target', far);
  await waitFor('ramp started', () => {
    const c = Number(document.getElementById('v:T:status').dataset.code);
    return c >= 300 && c < 400;
  });
  await page.waitForTimeout(1500);
  await shot('ramping');
  const stopButton = page.locator('button[data-stop="T"]');
  check('stop button on the Drivable', await stopButton.count() === 1 && await stopButton.isVisible(), await stopButton.count());
  await stopButton.click();
  await waitFor('stop done', () => /stopped/.test(document.querySelector('button[data-stop="T"] + .msg').textContent));
  const stopped = await waitFor('idle after stop', () => {
    const c = Number(document.getElementById('v:T:status').dataset.code);
    return c >= 100 && c < 200;
  }, null, 30000);
  const targetAfter = parseFloat(await valueOf('T:target'));
  check('stop ended the ramp', stopped && Math.abs(targetAfter - far) > 1, { start, far, targetAfter, status: await text('[id="v:T:status"]') });
  await shot('stopped');

  // --- a bool switch, and an error value: p:_fault on makes p:value an error_update
  await page.click('form[data-acc="p:_fault"] input[type=checkbox]');
  const faulty = await waitFor('error value shown', () => {
    const e = document.getElementById('v:p:value');
    return e.classList.contains('err') && /^[A-Za-z]+: ./.test(e.textContent);
  });
  if (faulty) check('error value shown', true, await valueOf('p:value'));
  await shot('error-value');
  await page.click('form[data-acc="p:_fault"] input[type=checkbox]');
  await waitFor('value back after the fault', () => /mbar$/.test(document.getElementById('v:p:value').textContent)
    && !document.getElementById('v:p:value').classList.contains('err'));
  check('bool switch', await valueOf('p:_fault') === 'false', await valueOf('p:_fault'));

  // --- keyboard: the controls are reachable with Tab and have visible focus
  await page.focus('form[data-acc="T:target"] input');
  await page.keyboard.press('Tab');
  const focused = await page.evaluate(() => {
    const a = document.activeElement;
    return { tag: a.tagName, type: a.type, outline: getComputedStyle(a).outlineStyle };
  });
  check('Tab reaches the set button', focused.tag === 'BUTTON' && focused.type === 'submit', focused);
  const labelled = await page.evaluate(() => [...document.querySelectorAll('main input, main select')]
    .filter((i) => !(i.labels && i.labels.length) && !i.getAttribute('aria-label')).map((i) => i.id));
  check('every input has a label', labelled.length === 0, labelled);
}

async function scenarioReconnect({ page, check, waitFor, waitLive, valueOf, shot, timeoutMs }) {
  await waitFor('values painted', () => document.getElementById('v:T:value').textContent !== '');
  await shot('live');
  const answer = await askDriver('kill', timeoutMs * 2);
  check('gateway killed', answer === 'ok', answer);
  const down = await waitFor('page shows disconnected', () => document.body.classList.contains('stale')
    && !document.getElementById('banner').hidden && /disconnected/.test(document.getElementById('banner').textContent));
  if (down) check('page shows disconnected', true, await page.textContent('#banner'));
  const grey = await page.evaluate(() => getComputedStyle(document.getElementById('v:T:value')).opacity);
  check('values greyed while disconnected', Number(grey) < 1, grey);
  await shot('disconnected');
  const connectsBefore = await page.evaluate(() => window.secopClient.connects);
  const updatesBefore = await page.evaluate(() => window.secopClient.stats().updates);
  const answer2 = await askDriver('restart', timeoutMs * 2);
  check('gateway restarted', answer2 === 'ok', answer2);
  const back = await waitFor('live again', () => window.secopClient.phase === 'live' && !document.body.classList.contains('stale')
    && document.getElementById('banner').hidden, null, 30000);
  if (back) check('live again', true, await page.evaluate(() => window.secopClient.connects));
  check('reconnected by itself', await page.evaluate(() => window.secopClient.connects) > connectsBefore, null);
  await waitFor('fresh values after reconnect', (n) => window.secopClient.stats().updates > n + 3, updatesBefore);
  check('fresh values after reconnect', /^\d+\.\d{3} K$/.test(await valueOf('T:value')), await valueOf('T:value'));
  await shot('reconnected');
}

async function scenarioReadOnly({ page, check, waitFor, valueOf, shot }) {
  await waitFor('values painted', () => document.getElementById('v:T:value').textContent !== '');
  await page.check('#expert');
  await page.waitForTimeout(300);
  const controls = await page.evaluate(() => [...document.querySelectorAll('main input, main select, main button, main textarea, main form')]
    .map((e) => `${e.tagName} ${e.closest('[data-acc]') ? e.closest('[data-acc]').dataset.acc : ''}`));
  check('no controls', controls.length === 0, controls);
  check('read-only banner', /read-only/.test(await page.textContent('#banner')) && !(await page.evaluate(() => document.getElementById('banner').hidden)), await page.textContent('#banner'));
  check('values still shown', /^\d+\.\d{3} K$/.test(await valueOf('T:value')), await valueOf('T:value'));
  await shot('read-only');
}

async function scenarioLive({ page, check, waitFor, valueOf, shot, idn, fakeHistory, historyBefore }) {
  const loaded = await page.evaluate(() => Date.now() / 1000);
  const idnShown = await page.textContent('#idn');
  check('identification shown', idnShown === idn, idnShown);
  await waitFor('values painted', () => document.getElementById('v:T:value').textContent !== '');
  const before = await valueOf('T:value');
  await waitFor('values update', (b) => document.getElementById('v:T:value').textContent !== b, before);
  check('values update', true, [before, await valueOf('T:value')]);
  // the plot of T:value: drawn, and with --fake-history the past hour in it
  const minPoints = fakeHistory ? 300 : 2;
  await waitFor('history plotted', (n) => window.secopClient.historyLength('T:value') >= n, minPoints);
  await page.waitForTimeout(600);
  const inked = await page.evaluate(() => {
    const c = document.querySelector('tr[data-acc="T:value"] canvas');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
    return { pixels: n, points: window.secopClient.historyLength('T:value') };
  });
  check('history plotted', inked.pixels > (fakeHistory ? 100 : 4) && inked.points >= minPoints, inked);
  if (historyBefore > 0) {
    // from the gateway's own GET /history: points from before the page was opened
    const oldest = await page.evaluate(() => window.secopClient.historyOldest('T:value'));
    check('history from before the page', oldest !== null && oldest <= loaded - historyBefore,
          { oldest, loaded, historyBefore });
  }
  await shot(fakeHistory ? 'history' : 'custom-identification');
}

main().catch((e) => {
  console.log(JSON.stringify({ ok: false, failures: [`run broke: ${e.stack || e}`] }));
  process.exit(2);
});
