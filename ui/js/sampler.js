// The broker-wide sample: GET /api/overview and /api/nodes every 5 s while logged in, kept
// client-side (the last 10 minutes) for the overview's charts; alarms go to the red banner on
// every page.

import { get } from './api.js';
import { bytes } from './format.js';
import { h } from './dom.js';

export const PERIOD_MS = 5000;
const KEEP = 120; // 10 minutes

export const samples = []; // {t, overview, node}
const listeners = new Set();
let timer = null;
let running = false;
let last = null;

/** Call `fn(sample)` on every new sample (and at once with the last one, if any). */
export function subscribe(fn) {
  listeners.add(fn);
  if (last) fn(last);
  return () => listeners.delete(fn);
}

export function latest() { return last; }

async function tick() {
  timer = null;
  try {
    const [overview, nodes] = await Promise.all([
      get('/api/overview'),
      get('/api/nodes').catch(() => []),
    ]);
    last = { t: Date.now(), overview, node: nodes[0] || null, error: null };
    samples.push(last);
    if (samples.length > KEEP) samples.shift();
    showAlarms(last.node);
  } catch (e) {
    last = { ...(last || {}), error: e };
  }
  for (const fn of listeners) {
    try { fn(last); } catch (e) { console.warn(e); }
  }
  if (running) timer = setTimeout(tick, PERIOD_MS);
}

export function start() {
  if (running) return;
  running = true;
  tick();
}

export function stop() {
  running = false;
  if (timer) clearTimeout(timer);
  timer = null;
  samples.length = 0;
  last = null;
  listeners.clear();
  showAlarms(null);
}

/** The red banner: memory and disk alarms block publishers, people must see them. */
function showAlarms(node) {
  const box = document.getElementById('alarms');
  const items = [];
  if (node?.mem_alarm) {
    items.push(h('p', null, h('strong', null, 'Memory alarm: '),
      `publishers are blocked. Memory used ${bytes(node.mem_used)} of the ${bytes(node.mem_limit)} limit.`));
  }
  if (node?.disk_free_alarm) {
    items.push(h('p', null, h('strong', null, 'Disk alarm: '),
      `publishers are blocked. Free disk ${bytes(node.disk_free)}, below the ${bytes(node.disk_free_limit)} limit.`));
  }
  box.replaceChildren(...items);
  box.hidden = items.length === 0;
}
