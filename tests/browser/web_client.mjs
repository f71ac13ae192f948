// Drives the gateway's built-in web client (GET /, web/app.js) in headless Chromium
// (Debian's /usr/bin/chromium through playwright-core) and prints one JSON object with
// the results. Run by tests/python/test_web_client.py.
//
//   node web_client.mjs http://127.0.0.1:PORT/ --scenario NAME [--shots DIR] [--idn TEXT]
//                       [--timeout SECONDS] [--expect JSON]
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
//   editors    the editors of the non-scalar types, partly with the keyboard only: the expert
//              switch (Space), io:communicate's argument form (Enter) and the enum select of
//              ps:mode (arrow key, Tab, Enter) reached with Tab; ps:mode again with the
//              mouse; the struct ps:_limits through its member fields (an out-of-range member
//              refused by the page, nothing sent; an optional member left empty is not
//              sent); the tuple T:target_limits through its fields with the keyboard (the
//              page narrows T:target's input to it; a member out of range refused by the
//              page, min above max by the gateway). result.final holds what the page shows
//              at the end, for the test to compare with the gateway's own values
//   display    a node of the test's own (tests/python/test_web_client.py, DISPLAY_*): --expect
//              JSON gives what it must show. Values that the default node does not have, each
//              compared with its exact text: an array of doubles with its unit and fmtstr, a
//              blob (size and hex bytes), a matrix (its dimensions and element type), a long
//              UTF-8 string (whole, inside its card), scaled values (with and without
//              fmtstr), an int with unit; a value the instrument sent above its max shown
//              as the error class and text (red), never as a value, and its module's ERROR
//              status; the modules by group, then importance (higher first), then name,
//              modules without a group last; a description of several lines shown as its
//              first line, the rest on demand (a click on it); a "_" parameter only with the
//              expert switch on. result.shown holds every text checked
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
  const args = { url: null, scenario: 'main', shots: null, idn: null, timeout: 20, fakeHistory: false, historyBefore: 0, expect: null };
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
    else if (a === '--expect') args.expect = JSON.parse(value());
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
    else if (args.scenario === 'editors') await scenarioEditors({ page, check, waitFor, valueOf, shot, result });
    else if (args.scenario === 'live') await scenarioLive({ page, check, waitFor, valueOf, shot, idn: args.idn, fakeHistory: args.fakeHistory, historyBefore: args.historyBefore });
    else if (args.scenario === 'display') await scenarioDisplay({ page, check, waitFor, valueOf, shot, result, expect: args.expect });
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

// Press Tab (Shift+Tab with back) until the element `selector` first matches has the
// focus; the number of presses, or -1 after `max`.
async function tabTo(page, selector, { back = false, max = 150 } = {}) {
  for (let i = 1; i <= max; i++) {
    await page.keyboard.press(back ? 'Shift+Tab' : 'Tab');
    if (await page.evaluate((s) => document.activeElement !== null && document.activeElement === document.querySelector(s), selector)) return i;
  }
  return -1;
}

// The focused element: what it is and whether its focus is visible.
const focusInfo = (page) => page.evaluate(() => {
  const a = document.activeElement;
  return { tag: a.tagName, type: a.type || null, acc: a.closest('[data-acc]') ? a.closest('[data-acc]').dataset.acc : null,
           id: a.id, focusVisible: a.matches(':focus-visible'), outline: getComputedStyle(a).outlineStyle };
});

// The lines the page sent (window.secopClient.sent) from index `from` on.
const sentFrom = async (page, from) => (await page.evaluate(() => window.secopClient.sent)).slice(from);
const sentCount = async (page) => (await page.evaluate(() => window.secopClient.sent)).length;

// The message next to a control: its text, its source (page or gateway), aria-invalid.
const formMsg = (page, key) => page.evaluate((k) => {
  const f = document.querySelector(`form[data-acc="${k}"]`);
  const m = f.querySelector('.msg');
  return { text: m.textContent, source: m.dataset.source || null,
           invalid: [...f.querySelectorAll('input, select')].map((i) => i.getAttribute('aria-invalid')) };
}, key);

// The JSON value of the last "change <key> <json>" line in `lines`, or undefined.
function changeValue(lines, key) {
  const prefix = `change ${key} `;
  const l = lines.filter((x) => x.startsWith(prefix)).pop();
  if (l === undefined) return undefined;
  try { return JSON.parse(l.slice(prefix.length)); } catch (e) { return `unparsable: ${l}`; }
}

const fmt3 = (x) => x.toFixed(3);
const sameJson = (a, b) => JSON.stringify(a) === JSON.stringify(b);

async function scenarioEditors({ page, check, waitFor, valueOf, shot, result }) {
  const keys = ['T:target', 'T:target_limits', 'ps:mode', 'ps:_limits'];
  await waitFor('values painted', (ks) => ks.every((k) => {
    const e = document.getElementById(`v:${k}`);
    return e && e.textContent !== '';
  }), keys);
  const members = { off: 0, constant_voltage: 1, constant_current: 2 };
  const initial = {};
  for (const k of keys) initial[k] = await valueOf(k);
  result.initial = initial;
  await shot('start');

  // --- keyboard only: the expert switch, with Space, is the first stop of Tab
  const toExpert = await tabTo(page, '#expert', { max: 10 });
  check('Tab reaches the expert switch', toExpert > 0, { presses: toExpert, focused: await focusInfo(page) });
  await page.keyboard.press('Space');
  const expertOn = await waitFor('expert switch with Space', () => document.body.classList.contains('expert')
    && getComputedStyle(document.querySelector('tr[data-acc="ps:_limits"]')).display !== 'none'
    && getComputedStyle(document.getElementById('m:io')).display !== 'none');
  if (expertOn) check('expert switch with Space', true, await page.evaluate(() => document.getElementById('expert').checked));

  // --- a command with an argument form (io:communicate), with the keyboard
  const cmdKey = 'io:communicate';
  const cmdSel = `form[data-acc="${cmdKey}"] input`;
  // (the io card builds its rows once it is shown and scrolled into view)
  const cmdForm = await waitFor('command has an argument form', (k) => {
    const f = document.querySelector(`form[data-acc="${k}"]`);
    return f !== null && f.querySelectorAll('input').length === 1 && f.querySelectorAll('button[type=submit]').length === 1;
  }, cmdKey);
  if (cmdForm) check('command has an argument form', true, await page.$eval(cmdSel, (i) => ({ type: i.type, maxLength: i.maxLength })));
  const toCmd = await tabTo(page, cmdSel);
  check('Tab reaches the command argument', toCmd > 0, { presses: toCmd, focused: await focusInfo(page) });
  const words = `hello secop ${Date.now() % 100000}`;
  let mark = await sentCount(page);
  await page.keyboard.type(`ECHO ${words}`);
  await page.keyboard.press('Enter');
  const echoed = await waitFor('command result shown', (w) => document.getElementById('r:io:communicate').textContent === w, words);
  if (echoed) check('command result shown', true, await page.textContent('[id="r:io:communicate"]'));
  const cmdSent = await sentFrom(page, mark);
  check('command sent with its argument', cmdSent.includes(`do ${cmdKey} ${JSON.stringify(`ECHO ${words}`)}`), cmdSent);
  await shot('command-result');

  // --- enum: ps:mode with the keyboard (Tab to the select, an arrow key, Tab, Enter)
  const modeSel = 'form[data-acc="ps:mode"] select';
  const modeBefore = initial['ps:mode'];
  const selectShown = await page.$eval(modeSel, (s) => ({ value: s.value, text: s.options[s.selectedIndex].text, options: [...s.options].map((o) => [o.text, o.value]) }));
  check('enum select shows the current member', modeBefore in members && selectShown.value === String(members[modeBefore]) && selectShown.text === modeBefore,
        { shown: modeBefore, select: selectShown });
  check('enum select lists every member by name', sameJson(selectShown.options, Object.entries(members).map(([n, v]) => [n, String(v)])), selectShown.options);
  const toSelect = await tabTo(page, modeSel);
  const onSelect = await focusInfo(page);
  check('Tab reaches the enum select', toSelect > 0, { presses: toSelect, focused: onSelect });
  check('keyboard focus visible', onSelect.focusVisible && onSelect.outline !== 'none', onSelect);
  const last = Math.max(...Object.values(members));
  const arrow = members[modeBefore] === last ? 'ArrowUp' : 'ArrowDown';
  await page.keyboard.press(arrow);
  const picked = await page.$eval(modeSel, (s) => ({ value: Number(s.value), text: s.options[s.selectedIndex].text }));
  check('arrow key picks another member', picked.text !== modeBefore && members[picked.text] === picked.value, { before: modeBefore, arrow, picked });
  mark = await sentCount(page);
  await page.keyboard.press('Tab');
  const onSet = await focusInfo(page);
  check('Tab from the select reaches its set button', onSet.tag === 'BUTTON' && onSet.type === 'submit' && onSet.acc === 'ps:mode', onSet);
  await shot('enum-keyboard');
  await page.keyboard.press('Enter');
  await waitFor('enum change sent', () => window.secopClient.sent.some((l) => l.startsWith('change ps:mode ')));
  const modeLines = (await sentFrom(page, mark)).filter((l) => l.startsWith('change ps:mode'));
  check('enum change sent as the member number', sameJson(modeLines, [`change ps:mode ${picked.value}`]), { picked, sent: modeLines });
  const modeShown = await waitFor('enum shows the new member name', (n) => document.getElementById('v:ps:mode').textContent === n, picked.text);
  if (modeShown) check('enum shows the new member name', true, await valueOf('ps:mode'));
  await waitFor('enum change confirmed', () => document.querySelector('form[data-acc="ps:mode"] .msg').textContent === 'set'
    || document.querySelector('form[data-acc="ps:mode"] .msg').classList.contains('err'), null, 5000);
  const modeMsg = await formMsg(page, 'ps:mode');
  check('enum change confirmed', modeMsg.text === 'set', modeMsg);
  await shot('enum-changed');

  // --- enum with the mouse: the third member
  const third = Object.keys(members).find((n) => n !== modeBefore && n !== picked.text);
  mark = await sentCount(page);
  await page.selectOption(modeSel, String(members[third]));
  await page.click('form[data-acc="ps:mode"] button[type=submit]');
  const thirdShown = await waitFor('enum changed with the mouse', (n) => document.getElementById('v:ps:mode').textContent === n, third);
  const thirdLines = (await sentFrom(page, mark)).filter((l) => l.startsWith('change ps:mode'));
  if (thirdShown) check('enum changed with the mouse', sameJson(thirdLines, [`change ps:mode ${members[third]}`]), { shown: await valueOf('ps:mode'), sent: thirdLines });
  await page.waitForTimeout(300);
  const selectAfter = await page.$eval(modeSel, (s) => s.options[s.selectedIndex].text);
  check('enum select shows the new member', selectAfter === third, selectAfter);

  // --- struct: ps:_limits through its member fields
  const limKey = 'ps:_limits';
  const limForm = `form[data-acc="${limKey}"]`;
  const parseStruct = (t) => {
    const m = /^\{voltage: (-?\d+\.\d{3}) V, current: (-?\d+\.\d{3}) A\}$/.exec(t || '');
    return m ? { voltage: Number(m[1]), current: Number(m[2]) } : null;
  };
  const limBefore = parseStruct(await valueOf(limKey));
  const fields = await page.$$eval(`${limForm} fieldset > .member`, (ls) => ls.map((l) => ({
    name: l.firstChild.textContent, value: l.querySelector('input').value, min: l.querySelector('input').min, max: l.querySelector('input').max,
    unit: l.querySelector('.unit') ? l.querySelector('.unit').textContent : null })));
  check('struct has a field per member', fields.length === 2 && fields[0].name === 'voltage' && fields[1].name === 'current'
    && fields[0].unit === 'V' && fields[1].unit === 'A' && fields[0].max === '30' && fields[1].max === '5', fields);
  check('struct fields show the current values', limBefore !== null && fields.length === 2
    && Number(fields[0].value) === limBefore.voltage && Number(fields[1].value) === limBefore.current, { shown: await valueOf(limKey), fields });
  const volt = page.locator(`${limForm} input`).nth(0);
  const curr = page.locator(`${limForm} input`).nth(1);
  const newLim = {
    voltage: limBefore && limBefore.voltage === 24.5 ? 23.5 : 24.5,
    current: limBefore && limBefore.current === 2.75 ? 2.25 : 2.75,
  };
  mark = await sentCount(page);
  await volt.fill(String(newLim.voltage));
  await curr.fill(String(newLim.current));
  await page.click(`${limForm} button[type=submit]`);
  const limText = `{voltage: ${fmt3(newLim.voltage)} V, current: ${fmt3(newLim.current)} A}`;
  const limShown = await waitFor('struct shows the new values', (t) => document.getElementById('v:ps:_limits').textContent === t, limText);
  if (limShown) check('struct shows the new values', true, await valueOf(limKey));
  check('struct change sent', sameJson(changeValue(await sentFrom(page, mark), limKey), newLim), await sentFrom(page, mark));
  await shot('struct-changed');

  // an out-of-range member: refused by the page, inline, nothing sent
  for (const [field, member, bad] of [[volt, 'voltage', 31], [curr, 'current', -0.5]]) {
    const name = member === 'voltage' ? 'struct member above its max refused by the page' : 'struct member below its min refused by the page';
    mark = await sentCount(page);
    await volt.fill(String(newLim.voltage));
    await curr.fill(String(newLim.current));
    await field.fill(String(bad));
    await page.click(`${limForm} button[type=submit]`);
    await waitFor(name, () => /RangeError/.test(document.querySelector('form[data-acc="ps:_limits"] .msg').textContent));
    const m = await formMsg(page, limKey);
    check(name, m.source === 'page' && m.text.startsWith(`RangeError: ${member}: `) && m.invalid.every((x) => x === 'true'), m);
    await page.waitForTimeout(300);
    const after = await sentFrom(page, mark);
    check(`nothing sent for a refused ${member}`, !after.some((l) => l.startsWith(`change ${limKey}`)), after);
    check(`refused ${member} changed nothing`, await valueOf(limKey) === limText, await valueOf(limKey));
    if (member === 'voltage') {
      // the message wraps inside the module's card instead of running past its edge
      const inside = await page.evaluate(() => {
        const msg = document.querySelector('form[data-acc="ps:_limits"] .msg').getBoundingClientRect();
        const card = document.getElementById('m:ps').getBoundingClientRect();
        return { msgRight: msg.right, cardRight: card.right, msgWidth: msg.width };
      });
      check('message stays inside the card', inside.msgWidth > 0 && inside.msgRight <= inside.cardRight, inside);
      await shot('struct-refused');
    }
  }

  // an optional member left empty: only the other one is sent, the node keeps the first
  const partial = { voltage: newLim.voltage === 20 ? 21 : 20 };
  mark = await sentCount(page);
  await volt.fill(String(partial.voltage));
  await curr.fill('');
  await page.click(`${limForm} button[type=submit]`);
  const partText = `{voltage: ${fmt3(partial.voltage)} V, current: ${fmt3(newLim.current)} A}`;
  const partShown = await waitFor('struct with an empty optional member', (t) => document.getElementById('v:ps:_limits').textContent === t, partText);
  check('only the given member sent', sameJson(changeValue(await sentFrom(page, mark), limKey), partial), await sentFrom(page, mark));
  if (partShown) check('struct with an empty optional member', true, await valueOf(limKey));
  const limMsg = await formMsg(page, limKey);
  check('struct message cleared after success', !limMsg.text.includes('Error') && limMsg.invalid.every((x) => x === null), limMsg);
  await page.waitForTimeout(300);
  const refilled = await page.$$eval(`${limForm} input`, (is) => is.map((i) => i.value));
  check('struct fields show the node value after the change', Number(refilled[0]) === partial.voltage && Number(refilled[1]) === newLim.current, refilled);
  await shot('struct-partial');

  // --- tuple: T:target_limits through its fields, with the keyboard
  const tlKey = 'T:target_limits';
  const tlForm = `form[data-acc="${tlKey}"]`;
  const parseTuple = (t) => {
    const m = /^\((-?\d+\.\d{3}) K, (-?\d+\.\d{3}) K\)$/.exec(t || '');
    return m ? [Number(m[1]), Number(m[2])] : null;
  };
  const tlBefore = parseTuple(initial[tlKey]);
  const tlFields = await page.$$eval(`${tlForm} input`, (is) => is.map((i) => i.value));
  check('tuple fields show the current values', tlBefore !== null && tlFields.length === 2
    && Number(tlFields[0]) === tlBefore[0] && Number(tlFields[1]) === tlBefore[1], { shown: initial[tlKey], fields: tlFields });
  const newTl = tlBefore && tlBefore[0] === 10.5 ? [12.5, 340.75] : [10.5, 350.25];
  const toTuple = await tabTo(page, `${tlForm} input`, { back: true });
  check('Shift+Tab reaches the tuple fields', toTuple > 0, { presses: toTuple, focused: await focusInfo(page) });
  mark = await sentCount(page);
  await page.keyboard.press('Control+A');
  await page.keyboard.type(String(newTl[0]));
  await page.keyboard.press('Tab');
  const second = await focusInfo(page);
  check('Tab moves to the second tuple member', second.tag === 'INPUT' && second.acc === tlKey
    && await page.evaluate((s) => document.activeElement === document.querySelectorAll(s)[1], `${tlForm} input`), second);
  await page.keyboard.press('Control+A');
  await page.keyboard.type(String(newTl[1]));
  await page.keyboard.press('Enter');
  const tlText = `(${fmt3(newTl[0])} K, ${fmt3(newTl[1])} K)`;
  const tlShown = await waitFor('tuple shows the new values', (t) => document.getElementById('v:T:target_limits').textContent === t, tlText);
  if (tlShown) check('tuple shows the new values', true, await valueOf(tlKey));
  check('tuple change sent', sameJson(changeValue(await sentFrom(page, mark), tlKey), newTl), await sentFrom(page, mark));
  const narrowed = await waitFor('target field narrowed to the new limits', (w) => {
    const i = document.querySelector('form[data-acc="T:target"] input');
    return Number(i.min) === w[0] && Number(i.max) === w[1];
  }, newTl, 5000);
  if (narrowed) check('target field narrowed to the new limits', true, await page.$eval('form[data-acc="T:target"] input', (i) => [i.min, i.max]));
  await shot('tuple-changed');

  // a member out of its datainfo range: refused by the page, nothing sent
  mark = await sentCount(page);
  await page.fill(`${tlForm} input >> nth=0`, '1');
  await page.fill(`${tlForm} input >> nth=1`, String(newTl[1]));
  await page.click(`${tlForm} button[type=submit]`);
  await waitFor('tuple member out of range refused by the page', () => /RangeError/.test(document.querySelector('form[data-acc="T:target_limits"] .msg').textContent));
  const tlMsg = await formMsg(page, tlKey);
  check('tuple member out of range refused by the page', tlMsg.source === 'page' && /^RangeError: \[0\]: 1 is outside \[1\.5, 400\]/.test(tlMsg.text), tlMsg);
  await page.waitForTimeout(300);
  const tlAfter = await sentFrom(page, mark);
  check('nothing sent for a refused tuple', !tlAfter.some((l) => l.startsWith(`change ${tlKey}`)), tlAfter);
  await shot('tuple-refused');

  // min above max: each member in range, so it is sent; the node refuses it, inline
  mark = await sentCount(page);
  await page.fill(`${tlForm} input >> nth=0`, '300');
  await page.fill(`${tlForm} input >> nth=1`, '200');
  await page.click(`${tlForm} button[type=submit]`);
  await waitFor('gateway refuses min above max inline', () => document.querySelector('form[data-acc="T:target_limits"] .msg').dataset.source === 'gateway');
  const gwMsg = await formMsg(page, tlKey);
  check('gateway refuses min above max inline', /^RangeError: /.test(gwMsg.text) && gwMsg.source === 'gateway', gwMsg);
  check('min above max was sent', sameJson(changeValue(await sentFrom(page, mark), tlKey), [300, 200]), await sentFrom(page, mark));
  await page.waitForTimeout(300);
  check('refused tuple changed nothing', await valueOf(tlKey) === tlText, await valueOf(tlKey));
  await shot('tuple-gateway-refused');

  result.final = { 'ps:mode': await valueOf('ps:mode'), 'ps:_limits': parseStruct(await valueOf(limKey)), 'T:target_limits': parseTuple(await valueOf(tlKey)) };
  const labelled = await page.evaluate(() => [...document.querySelectorAll('main input, main select')]
    .filter((i) => !(i.labels && i.labels.length) && !i.getAttribute('aria-label')).map((i) => i.id));
  check('every input has a label', labelled.length === 0, labelled);
  const nested = await page.$$eval('label label', (ls) => ls.length);
  check('no label inside another', nested === 0, nested);
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

// A parameter's value cell once its card was built (cards are built when they scroll
// into view): scrolled to, then waited for until it shows something.
async function shownValue(page, waitFor, key) {
  const module = key.split(':')[0];
  await page.locator(`[id="m:${module}"]`).scrollIntoViewIfNeeded();
  await waitFor(`${key} painted`, (k) => {
    const e = document.getElementById(`v:${k}`);
    return e !== null && e.textContent !== '';
  }, key);
  return page.evaluate((k) => {
    const e = document.getElementById(`v:${k}`);
    return e ? e.textContent : null;
  }, key);
}

async function scenarioDisplay({ page, check, waitFor, valueOf, shot: fullShot, result, expect }) {
  if (!expect) throw new Error('the display scenario needs --expect JSON');
  // a full-page screenshot of a scrolled page draws the sticky header in its middle
  const shot = async (name) => { await page.evaluate(() => window.scrollTo(0, 0)); await fullShot(name); };
  const shown = result.shown = {};

  // --- the order: groups (by their most important module, then name), within a group
  // importance (higher first, none last), then name; modules without a group last
  const layout = await page.evaluate(() => ({
    sections: [...document.querySelectorAll('main section.group')].map((s) => ({
      group: s.dataset.group,
      heading: s.querySelector(':scope > h2') ? s.querySelector(':scope > h2').textContent : null,
      modules: [...s.querySelectorAll('section.module')].map((m) => m.dataset.module),
      top: s.getBoundingClientRect().top,
    })),
    modules: [...document.querySelectorAll('main section.module')].map((m) => m.dataset.module),
  }));
  shown.order = layout;
  check('modules in order', JSON.stringify(layout.modules) === JSON.stringify(expect.order), { shown: layout.modules, expected: expect.order });
  check('groups in order, headed by their names', JSON.stringify(layout.sections.map((s) => [s.group, s.heading, s.modules]))
    === JSON.stringify(expect.groups), { shown: layout.sections.map((s) => [s.group, s.heading, s.modules]), expected: expect.groups });
  check('groups stacked in order on screen', layout.sections.every((s, i) => i === 0 || s.top > layout.sections[i - 1].top),
    layout.sections.map((s) => [s.group, s.top]));
  // cards of a group read row by row: on screen in the same order as in the document
  const reading = await page.evaluate(() => [...document.querySelectorAll('main section.module')]
    .map((m) => { const r = m.getBoundingClientRect(); return [m.dataset.module, Math.round(r.top), Math.round(r.left)]; }));
  const byPosition = [...reading].sort((a, b) => a[1] - b[1] || a[2] - b[2]).map((x) => x[0]);
  check('cards read in the same order on screen', JSON.stringify(byPosition) === JSON.stringify(expect.order), reading);
  await shot('overview');

  // --- values, each with its exact text
  for (const [key, want] of Object.entries(expect.values)) {
    const got = await shownValue(page, waitFor, key);
    shown[key] = got;
    const err = await page.evaluate((k) => document.getElementById(`v:${k}`).classList.contains('err'), key);
    check(`shown: ${key}`, got === want && !err, { shown: got, expected: want, err });
  }

  // a matrix: its dimensions and element type, readable (the page's text is not fixed by
  // any rule, so this asks for what a user needs: 2x3 of <f4 elements, 24 bytes)
  {
    const key = expect.matrix.key;
    const got = await shownValue(page, waitFor, key);
    shown[key] = got;
    check('matrix shows its dimensions', typeof got === 'string' && got.includes(expect.matrix.dims), got);
    check('matrix shows its element type', typeof got === 'string' && got.includes(expect.matrix.elementtype) && !/\?/.test(got),
      { shown: got, elementtype: expect.matrix.elementtype });
    check('matrix shows its size', typeof got === 'string' && got.includes(`${expect.matrix.bytes} bytes`), got);
    check('matrix not shown as raw JSON', typeof got === 'string' && !got.includes('"blob"') && !got.includes('{'), got);
  }

  // a long string: whole, wrapped inside its card (no horizontal overflow)
  {
    const key = expect.long.key;
    const fits = await page.evaluate((k) => {
      const td = document.getElementById(`v:${k}`);
      const card = td.closest('section.module');
      const t = td.getBoundingClientRect();
      const c = card.getBoundingClientRect();
      return { tdRight: t.right, cardRight: c.right, lines: Math.round(t.height / parseFloat(getComputedStyle(td).lineHeight || '16')),
               cardScroll: card.scrollWidth - card.clientWidth, pageScroll: document.documentElement.scrollWidth - document.documentElement.clientWidth };
    }, key);
    check('long string wraps inside its card', fits.tdRight <= fits.cardRight && fits.cardScroll <= 0 && fits.pageScroll <= 0, fits);
    // a read-only string has no plot and no control: its text may take the row's width
    // instead of wrapping in a narrow column next to empty cells
    const row = await page.evaluate((k) => {
      const td = document.getElementById(`v:${k}`);
      const tr = td.closest('tr');
      const empty = [...tr.querySelectorAll('td')].filter((c) => c !== td && c.textContent === '' && c.children.length === 0);
      const card = td.closest('section.module').getBoundingClientRect().width;
      const lh = parseFloat(getComputedStyle(td).lineHeight);
      return { valueWidth: Math.round(td.getBoundingClientRect().width), rowWidth: Math.round(tr.getBoundingClientRect().width),
               cardWidth: Math.round(card), emptyCellsWidth: Math.round(empty.reduce((w, c) => w + c.getBoundingClientRect().width, 0)),
               lines: Math.round(td.getBoundingClientRect().height / lh) };
    }, key);
    shown[`${key} layout`] = row;
    check('long string uses the width of its row', row.valueWidth >= 0.6 * row.rowWidth, row);
  }

  // --- a value the instrument sent out of range: the error class and text, red, not a value
  {
    const key = expect.error.key;
    await page.locator(`[id="m:${key.split(':')[0]}"]`).scrollIntoViewIfNeeded();
    await waitFor(`${key} shows an error`, (k) => {
      const e = document.getElementById(`v:${k}`);
      return e !== null && e.textContent !== '';
    }, key);
    const e = await page.evaluate((k) => {
      const td = document.getElementById(`v:${k}`);
      return { text: td.textContent, err: td.classList.contains('err'), color: getComputedStyle(td).color };
    }, key);
    shown[key] = e.text;
    check('error value shown as class and text', e.text === expect.error.text, { shown: e.text, expected: expect.error.text });
    check('error value marked as an error', e.err && e.color === 'rgb(198, 40, 40)', e);
    check('error value not shown as a number', !e.text.includes(expect.error.notShown), e.text);
    const module = key.split(':')[0];
    const status = await waitFor(`${module} status ERROR`, (m) => {
      const s = document.getElementById(`v:${m}:status`);
      return s && Number(s.dataset.code) >= 400 && Number(s.dataset.code) < 500;
    }, module);
    const st = await page.evaluate((m) => {
      const s = document.getElementById(`v:${m}:status`);
      return { text: s.textContent, cls: s.className, card: document.getElementById(`m:${m}`).className };
    }, module);
    shown[`${module}:status`] = st.text;
    if (status) check(`${module} status ERROR`, st.text === expect.error.status && st.cls.includes('st-error') && st.card.includes('st-error'),
      { shown: st, expected: expect.error.status });
    // it stays an error over several polls (no flicker back to a value)
    await page.waitForTimeout(1000);
    const later = await page.evaluate((k) => document.getElementById(`v:${k}`).textContent, key);
    check('error value stays', later === expect.error.text, later);
    await page.locator(`[id="m:${module}"]`).scrollIntoViewIfNeeded();
    await shot('error-value');
  }

  // --- a description of several lines: the first line, the rest on demand
  {
    const d = expect.description;
    const sel = `[id="m:${d.module}"] .desc`;
    await page.locator(`[id="m:${d.module}"]`).scrollIntoViewIfNeeded();
    const closed = await page.evaluate((s) => {
      const desc = document.querySelector(s);
      const more = desc.querySelector('.more');
      const summary = desc.querySelector('summary');
      return { visible: desc.innerText.trim(), summary: summary ? summary.textContent : null,
               moreRendered: more ? more.checkVisibility() : null };
    }, sel);
    check('description shows its first line', closed.visible === d.first && closed.summary === d.first, closed);
    check('rest of the description hidden at first', closed.moreRendered === false, closed);
    await page.click(`${sel} summary`);
    const open = await waitFor('rest of the description on a click', (s) => {
      const more = document.querySelector(s).querySelector('.more');
      return more && more.checkVisibility();
    }, sel, 5000);
    const opened = await page.evaluate((s) => {
      const more = document.querySelector(s).querySelector('.more');
      return { text: more.innerText, lines: Math.round(more.getBoundingClientRect().height / parseFloat(getComputedStyle(more).lineHeight)) };
    }, sel);
    if (open) check('rest of the description on a click', opened.text === d.rest && opened.lines >= d.rest.split('\n').length, { shown: opened, expected: d.rest });
    await shot('description-open');
    await page.click(`${sel} summary`);
    const closedAgain = await page.evaluate((s) => !document.querySelector(s).querySelector('.more').checkVisibility(), sel);
    check('description folds again', closedAgain, closedAgain);
    const single = await page.evaluate((m) => {
      const desc = document.querySelector(`[id="m:${m}"] .desc`);
      return { text: desc.textContent, details: desc.querySelectorAll('details').length };
    }, d.single.module);
    check('one-line description shown as it is', single.text === d.single.text && single.details === 0, single);
  }

  // --- a "_" parameter: only with the expert switch on
  {
    const key = expect.expert.key;
    const row = `tr[data-acc="${key}"]`;
    await page.locator(`[id="m:${key.split(':')[0]}"]`).scrollIntoViewIfNeeded();
    await waitFor(`${key} row built`, (s) => document.querySelector(s) !== null, row);
    const hidden = await page.evaluate((s) => getComputedStyle(document.querySelector(s)).display === 'none', row);
    check('expert parameter hidden without the switch', hidden && !(await page.isChecked('#expert')), hidden);
    const others = await page.evaluate((m) => [...document.querySelectorAll(`[id="m:${m}"] tr[data-acc]`)]
      .filter((r) => getComputedStyle(r).display !== 'none').map((r) => r.dataset.acc), key.split(':')[0]);
    check('other parameters of its module shown', others.length > 0 && !others.includes(key), others);
    await page.check('#expert');
    const visible = await waitFor('expert parameter shown with the switch', (s) => getComputedStyle(document.querySelector(s)).display !== 'none', row, 5000);
    const text = await shownValue(page, waitFor, key);
    shown[key] = text;
    if (visible) check('expert parameter shown with the switch', text === expect.expert.text, { shown: text, expected: expect.expert.text });
    await shot('expert');
    await page.uncheck('#expert');
    const again = await waitFor('expert parameter hidden again', (s) => getComputedStyle(document.querySelector(s)).display === 'none', row, 5000);
    if (again) check('expert parameter hidden again', true, null);
  }
}

main().catch((e) => {
  console.log(JSON.stringify({ ok: false, failures: [`run broke: ${e.stack || e}`] }));
  process.exit(2);
});
