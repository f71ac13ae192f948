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
