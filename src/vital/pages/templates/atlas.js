// The atlas's layer page: filter cards by channel number ("12", "3,7", "10-20") and sort them by any metric.
function parseSet(text) {
  const parts = text.split(',').map(s => s.trim()).filter(s => s);
  if (!parts.length) return null;
  const keep = new Set();
  for (const p of parts) {
    const m = p.match(/^(\d+)(?:-(\d+))?$/);
    if (!m) return 'bad';
    const a = +m[1], b = m[2] === undefined ? a : +m[2];
    for (let c = Math.min(a, b); c <= Math.max(a, b) && keep.size < 100000; c++) keep.add(c);
  }
  return keep;
}
function applyFilter() {
  const keep = parseSet(document.getElementById('filter').value);
  let shown = 0;
  for (const card of document.querySelectorAll('.card')) {
    const on = keep === null || keep === 'bad' || keep.has(+card.dataset.channel);
    card.classList.toggle('hidden', !on);
    shown += on;
  }
  document.getElementById('shown').textContent = shown;
}
function applySort() {
  const key = document.getElementById('sort').value, grid = document.getElementById('grid');
  const cards = Array.from(grid.children);
  const value = c => { const v = c.dataset[key]; return v === undefined || v === '' ? NaN : +v; };
  const desc = key !== 'channel';
  cards.sort((a, b) => {
    const x = value(a), y = value(b);
    if (isNaN(x) && isNaN(y)) return +a.dataset.channel - +b.dataset.channel;
    if (isNaN(x)) return 1; if (isNaN(y)) return -1;
    return desc ? y - x : x - y;
  });
  for (const c of cards) grid.appendChild(c);
}
document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('filter').addEventListener('input', applyFilter);
  document.getElementById('sort').addEventListener('change', applySort);
});
