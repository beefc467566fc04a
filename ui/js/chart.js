// Time-series charts with uPlot (vendored, loaded as the global `uPlot`): samples are kept
// client-side, a point every poll, the last `keep` of them shown.

import { h } from './dom.js';

const pad = (n) => String(n).padStart(2, '0');
/** 14:05:30: compact, so the time axis labels never overlap. */
const clock = (t) => { const d = new Date(t * 1000); return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`; };

const COLORS = ['#1f6feb', '#2da44e', '#bf8700', '#cf222e', '#8250df', '#57606a'];

/**
 * A chart of `series` ({label, color?}) over time, in a titled figure appended to `parent`.
 * `fmt` formats the y values (axis and legend).
 */
export class TimeChart {
  constructor(parent, { title, series, fmt = String, axisFmt = fmt, integer = false, keep = 120, height = 190, span = 120 }) {
    this.keep = keep;
    this.height = height;
    this.data = [[], ...series.map(() => [])];
    this.box = h('div', { class: 'chart-box' });
    this.figure = h('figure', { class: 'chart' }, h('figcaption', null, title), this.box);
    parent.append(this.figure);
    const axisFont = '12px system-ui, sans-serif';
    const opts = {
      width: Math.max(this.box.clientWidth, 240),
      height,
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
      scales: {
        // At least `span` seconds wide, so the first samples do not stretch over years.
        x: { time: true, range: (u, min, max) => (min == null ? [Date.now() / 1000 - span, Date.now() / 1000] : [Math.min(min, max - span), max]) },
        y: { range: (u, min, max) => [0, Math.max((max ?? 0) * 1.1, integer ? 4 : 1)] },
      },
      axes: [
        { font: axisFont, stroke: '#57606a', grid: { stroke: '#eaeef2' }, ticks: { stroke: '#eaeef2' }, space: 70,
          values: (u, splits) => splits.map(clock) },
        { font: axisFont, stroke: '#57606a', size: 56, grid: { stroke: '#eaeef2' }, ticks: { stroke: '#eaeef2' },
          values: (u, splits) => splits.map((v) => axisFmt(v)),
          ...(integer ? { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 2e6, 5e6, 1e7, 1e8, 1e9] } : {}) },
      ],
      series: [
        { label: 'time', value: (u, v) => (v == null ? '–' : new Date(v * 1000).toLocaleTimeString()) },
        ...series.map((s, i) => ({
          label: s.label,
          stroke: s.color || COLORS[i % COLORS.length],
          width: 2,
          points: { show: false },
          value: (u, v) => (v == null ? '–' : fmt(v)),
        })),
      ],
    };
    this.plot = new window.uPlot(opts, this.data, this.box);
    this.resize = new ResizeObserver(() => {
      const w = this.box.clientWidth;
      if (w > 0 && Math.abs(w - this.plot.width) > 1) this.plot.setSize({ width: w, height: this.height });
    });
    this.resize.observe(this.box);
  }

  /** Add one sample at `t` (ms since the epoch). */
  push(t, values) {
    this.data[0].push(t / 1000);
    values.forEach((v, i) => this.data[i + 1].push(v ?? null));
    if (this.data[0].length > this.keep) this.data.forEach((a) => a.shift());
    this.plot.setData(this.data);
  }

  /** Replace every sample: `samples` are {t, values}. */
  load(samples) {
    this.data = this.data.map(() => []);
    for (const s of samples.slice(-this.keep)) {
      this.data[0].push(s.t / 1000);
      s.values.forEach((v, i) => this.data[i + 1].push(v ?? null));
    }
    this.plot.setData(this.data);
  }

  destroy() {
    this.resize.disconnect();
    this.plot.destroy();
  }
}
