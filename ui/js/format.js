// Numbers, rates, sizes and times as people read them.

const UNITS = ['', 'k', 'M', 'G', 'T'];

/** 999, 1.2k, 34k, 5.6M. */
export function num(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  const sign = n < 0 ? '-' : '';
  let v = Math.abs(n);
  if (v < 1000) return sign + (Number.isInteger(v) ? String(v) : v.toFixed(v < 10 ? 1 : 0));
  let i = 0;
  while (v >= 999.5 && i < UNITS.length - 1) { v /= 1000; i++; }
  return sign + (v < 10 ? v.toFixed(1) : v.toFixed(0)) + UNITS[i];
}

/** The exact count, with thousands separators (for titles). */
export const exact = (n) => (n === null || n === undefined ? '' : Number(n).toLocaleString('en'));

/** 0/s, 0.4/s, 12/s, 3.4k/s. */
export function rate(r) {
  if (r === null || r === undefined || Number.isNaN(r)) return '–';
  if (r === 0) return '0/s';
  if (Math.abs(r) < 1) return `${+r.toFixed(2)}/s`;
  if (Math.abs(r) < 10) return `${+r.toFixed(1)}/s`;
  return `${num(Math.round(r))}/s`;
}

/** A rate on a chart's axis: 0.25/s keeps its digits. */
export function rateAxis(r) {
  if (r !== 0 && Math.abs(r) < 10) return `${+r.toFixed(2)}/s`;
  return rate(r);
}

/** 512 B, 1.5 KiB, 12 MiB. */
export function bytes(n) {
  if (n === null || n === undefined) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n, i = 0;
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return `${i === 0 ? v : v < 10 ? v.toFixed(1) : v.toFixed(0)} ${u[i]}`;
}

/** 45 s, 3 min, 2 h 5 min, 4 d 3 h: a duration in milliseconds. */
export function duration(ms) {
  if (ms === null || ms === undefined) return '–';
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 24) return m % 60 ? `${h} h ${m % 60} min` : `${h} h`;
  const d = Math.floor(h / 24);
  return h % 24 ? `${d} d ${h % 24} h` : `${d} d`;
}

/** "5 s ago", "3 min ago", "in 2 min": `t` in milliseconds since the epoch. */
export function ago(t, now = Date.now()) {
  if (t === null || t === undefined) return '–';
  const d = now - t;
  if (Math.abs(d) < 1500) return 'just now';
  return d >= 0 ? `${duration(d)} ago` : `in ${duration(-d)}`;
}

/** An absolute local time, for titles next to relative ones. */
export function when(t) {
  if (t === null || t === undefined) return '';
  return new Date(t).toLocaleString();
}

/** A field at a dotted path (`message_stats.publish_details.rate`). */
export function pick(obj, path) {
  return path.split('.').reduce((o, k) => (o == null ? undefined : o[k]), obj);
}

/** The default exchange's display name. */
export const exchangeLabel = (name) => (name === '' ? '(AMQP default)' : name);
