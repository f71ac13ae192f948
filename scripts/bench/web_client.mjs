// Browser side of scripts/bench/web_client.py: loads the gateway's web client in headless
// Chromium (Debian's /usr/bin/chromium, playwright-core from tests/browser/node_modules)
// and prints one JSON object.
//
//   node scripts/bench/web_client.mjs URL [--loads N] [--duration SECONDS] [--timeout SECONDS]
//
// loads     N loads of the page, each in a new tab (the first with an empty cache):
//           navigation start -> first value painted (the frame that paints the first SECoP
//           update has run), and navigation start -> `active`
// duration  then one tab stays open for SECONDS: every update is timestamped on arrival
//           and again when the frame that paints it has run (web/app.js, window.secopClient);
//           the page computes p50/p99/max of that lag, the rate of updates it took in, the
//           frames per second and the long tasks (> 50 ms) of its main thread

import { chromium } from '../../tests/browser/node_modules/playwright-core/index.mjs';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

function parseArgs(argv) {
  const args = { url: null, loads: 10, duration: 20, timeout: 60 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => argv[++i];
    if (a === '--loads') args.loads = Number(value());
    else if (a === '--duration') args.duration = Number(value());
    else if (a === '--timeout') args.timeout = Number(value());
    else if (!args.url) args.url = a;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!args.url) throw new Error('usage: node web_client.mjs URL [--loads N] [--duration S]');
  return args;
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : null;
};

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const timeoutMs = args.timeout * 1000;
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'secop-bench-chromium-'));
  const result = { url: args.url, loads: [], errors: [] };
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM, headless: true, timeout: timeoutMs,
    viewport: { width: 1280, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  context.setDefaultTimeout(timeoutMs);
  result.browser = context.browser()?.version() ?? null;
  try {
    for (let i = 0; i < args.loads; i++) {
      const page = await context.newPage();
      page.on('pageerror', (e) => result.errors.push(e.message));
      await page.goto(args.url, { waitUntil: 'load' });
      await page.waitForFunction(() => window.secopClient && window.secopClient.stats().firstValuePaint !== null,
        null, { timeout: timeoutMs, polling: 20 });
      const s = await page.evaluate(() => window.secopClient.stats());
      result.loads.push({ firstValuePaintMs: s.firstValuePaint, activeMs: s.firstLive,
                          modules: s.modules, parameters: s.parameters });
      await page.close();
    }
    const firsts = result.loads.map((l) => l.firstValuePaintMs);
    result.firstValuePaintMedianMs = median(firsts);
    result.firstValuePaintColdMs = firsts[0];
    result.activeMedianMs = median(result.loads.map((l) => l.activeMs));

    if (args.duration > 0) {
      const page = await context.newPage();
      page.on('pageerror', (e) => result.errors.push(e.message));
      await page.goto(args.url, { waitUntil: 'load' });
      await page.waitForFunction(() => window.secopClient && window.secopClient.phase === 'live',
        null, { timeout: timeoutMs, polling: 50 });
      await page.waitForTimeout(2000);   // the initial burst of `activate` is not the steady state
      await page.evaluate(() => {
        window.benchFrames = 0;
        window.benchLong = [];
        const tick = () => { window.benchFrames++; requestAnimationFrame(tick); };
        requestAnimationFrame(tick);
        try {
          new PerformanceObserver((l) => { for (const e of l.getEntries()) window.benchLong.push(e.duration); })
            .observe({ type: 'longtask', buffered: false });
        } catch (e) { /* no longtask support */ }
        window.secopClient.resetStats();
        window.benchStart = performance.now();
      });
      await page.waitForTimeout(args.duration * 1000);
      const steady = await page.evaluate(() => {
        const s = window.secopClient.stats();
        const seconds = (performance.now() - window.benchStart) / 1000;
        return { ...s, seconds, updatesPerSecond: s.updates / seconds, framesPerSecond: window.benchFrames / seconds,
                 longTasks: window.benchLong.length, longTaskMaxMs: Math.max(0, ...window.benchLong),
                 visibleModules: [...document.querySelectorAll('section.module')].filter((m) => {
                   const r = m.getBoundingClientRect();
                   return r.bottom > 0 && r.top < innerHeight && getComputedStyle(m).display !== 'none';
                 }).length };
      });
      result.steady = steady;
      await page.close();

      // The same stream into a bare same-origin page (the style sheet's URL, so no client
      // script runs): one JSON.parse per message and nothing else. What Chromium itself
      // delivers on this machine.
      const bare = await context.newPage();
      await bare.goto(new URL('/assets/app.css', args.url).href, { waitUntil: 'load' });
      result.bare = await bare.evaluate((seconds) => new Promise((resolve) => {
        const ws = new WebSocket('ws://' + location.host + '/ws');
        let phase = 0;
        let n = 0;
        let t0 = 0;
        const age = [];
        setTimeout(() => resolve({ error: 'timeout', phase }), (seconds + 30) * 1000);
        ws.onerror = () => resolve({ error: 'websocket error', phase });
        ws.onopen = () => ws.send('*IDN?');
        ws.onmessage = (e) => {
          if (phase === 0) { phase = 1; ws.send('describe'); return; }
          if (phase === 1) { phase = 2; ws.send('activate'); return; }
          if (phase === 2) {
            if (e.data === 'active') { phase = 3; setTimeout(() => { phase = 4; t0 = performance.now(); }, 2000); }
            return;
          }
          if (phase !== 4) return;
          n++;
          const d = e.data;
          const j = JSON.parse(d.slice(d.indexOf(' ', 7) + 1));
          if (n % 50 === 0 && j[1] && j[1].t) age.push(Date.now() - j[1].t * 1000);
          if (performance.now() - t0 > seconds * 1000) {
            phase = 5;
            ws.close();
            age.sort((a, b) => a - b);
            resolve({ updatesPerSecond: n / seconds, ageP50: age[age.length >> 1], ageP99: age[Math.floor(age.length * 0.99)] });
          }
        };
      }), Math.min(args.duration, 10));
      await bare.close();
    }
  } finally {
    await context.close().catch(() => {});
    try { fs.rmSync(userDataDir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 }); } catch (e) { /* tmp */ }
  }
  console.log(JSON.stringify(result, null, 2));
}

main().catch((e) => {
  console.log(JSON.stringify({ error: String(e.stack || e) }));
  process.exit(2);
});
