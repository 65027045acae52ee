// The dashboard page: the guest's console (xterm.js), its display, and every device's counters
// and controls, over the three WebSockets src/dashboard/server.ts serves. Plain JavaScript run
// as it is by the browser: nothing to build.
import { Terminal } from '/vendor/xterm.mjs';

const wsUrl = (path) => `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${path}`;
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  e.append(...children);
  return e;
}

function setStatus(text, bad = false) {
  const s = $('status');
  s.textContent = text;
  s.classList.toggle('bad', bad);
}

// --- control: device views in, requests out -------------------------------------------------

const control = new WebSocket(wsUrl('/ws/control'));
let nextId = 1;
const waiting = new Map();
/** The latest views, by device id. */
let views = [];

/** Send a request; resolves with the server's reply. */
function request(body) {
  const id = nextId++;
  control.send(JSON.stringify({ ...body, id }));
  return new Promise((resolve) => waiting.set(id, resolve));
}

control.addEventListener('open', () => setStatus('connected'));
control.addEventListener('close', () => setStatus('disconnected from the back-end', true));
control.addEventListener('message', (e) => {
  const msg = JSON.parse(e.data);
  if (msg.t === 'devices') {
    views = msg.devices;
    renderDevices(views);
  } else if (msg.t === 'reply') {
    waiting.get(msg.id)?.(msg);
    waiting.delete(msg.id);
  }
});

// --- devices ---------------------------------------------------------------------------------

const QUEUE_COLUMNS = [
  ['requests', 'requests'],
  ['readBytes', 'bytes read'],
  ['writtenBytes', 'bytes written'],
  ['errors', 'errors'],
  ['ringFaults', 'faults'],
  ['notifications', 'interrupts'],
  ['suppressed', 'suppressed'],
];
const MiB = 1024 * 1024;
const cards = new Map();

function replyLine(card) {
  return card.querySelector('.reply');
}

async function act(card, body) {
  const line = replyLine(card);
  line.textContent = '…';
  const reply = await request(body);
  line.classList.toggle('bad', !reply.ok);
  line.textContent = reply.ok ? 'done' : reply.error;
  return reply;
}

/** The controls a device type offers, built once per card. */
function controlsFor(view, card) {
  const id = view.id;
  switch (view.type) {
    case 'balloon': {
      const size = el('input', { type: 'number', min: '0', step: '1', value: '0', 'aria-label': 'balloon target in MiB', 'data-control': 'balloon-mib' });
      return [el('label', {}, 'target MiB ', size), el('button', { 'data-control': 'balloon-set', onclick: () => act(card, { op: 'balloon', device: id, bytes: Math.round(Number(size.value) * MiB) }) }, 'Set')];
    }
    case 'net':
      return [
        el('button', { 'data-control': 'link-up', onclick: () => act(card, { op: 'link', device: id, up: true }) }, 'Link up'),
        el('button', { 'data-control': 'link-down', onclick: () => act(card, { op: 'link', device: id, up: false }) }, 'Link down'),
      ];
    case 'scsi': {
      const file = el('input', { type: 'text', placeholder: 'an image in the VM directory[,ro]', 'aria-label': 'image file', 'data-control': 'lun-file' });
      const target = el('input', { type: 'number', min: '0', max: '255', value: '0', style: 'width:4em', 'aria-label': 'target' });
      const lun = el('input', { type: 'number', min: '0', max: '16383', value: '1', style: 'width:5em', 'aria-label': 'LUN' });
      const address = () => ({ target: Number(target.value), number: Number(lun.value) });
      const list = async () => {
        const reply = await request({ op: 'lun', device: id, request: { op: 'list' } });
        if (reply.ok) card.querySelector('.luns').textContent = `LUNs: ${reply.luns.map((l) => `${l.target}:${l.number} (${(l.sectors * 512) / MiB} MiB${l.readOnly ? ', ro' : ''})`).join(', ') || 'none'}`;
      };
      queueMicrotask(list);
      const lunAct = async (sub) => {
        await act(card, { op: 'lun', device: id, request: sub });
        await list();
      };
      return [
        el('div', { class: 'luns extra' }),
        file, el('label', {}, 'target ', target), el('label', {}, 'lun ', lun),
        el('button', { 'data-control': 'lun-attach', onclick: () => lunAct({ op: 'attach', lun: file.value, ...address() }) }, 'Attach'),
        el('button', { 'data-control': 'lun-detach', onclick: () => lunAct({ op: 'detach', ...address() }) }, 'Detach'),
      ];
    }
    default:
      return [];
  }
}

function stateText(view) {
  const s = view.state;
  switch (view.type) {
    case 'balloon':
      return `target ${(s.targetBytes / MiB).toFixed(0)} MiB · actual ${(s.actualBytes / MiB).toFixed(0)} MiB · guest RAM ${(s.guestRamBytes / MiB).toFixed(0)} MiB`;
    case 'net':
      return `link ${s.link ? 'up' : 'down'}`;
    case 'input':
      return s.kind;
    default:
      return '';
  }
}

function card(view) {
  let c = cards.get(view.id);
  if (c !== undefined) return c;
  c = el('div', { class: 'device', 'data-device': view.id, 'data-type': view.type });
  const head = el(
    'tr',
    {},
    el('th', {}, 'queue'),
    el('th', { title: 'chains the device holds now, of the ring size' }, 'in flight'),
    ...QUEUE_COLUMNS.map(([, label]) => el('th', {}, label)),
  );
  c.append(
    el('h3', {}, `${view.id} `, el('small', {}, view.title)),
    el('div', { class: 'state', 'data-state': '' }),
    el('table', {}, el('thead', {}, head), el('tbody')),
    el('div', { class: 'idle-queues extra' }),
    el('div', { class: 'counts extra' }),
  );
  const controls = controlsFor(view, c);
  if (controls.length > 0) c.append(el('div', { class: 'controls' }, ...controls, el('span', { class: 'reply' })));
  $('devices').append(c);
  cards.set(view.id, c);
  return c;
}

function renderDevices(list) {
  for (const view of list) {
    const c = card(view);
    c.querySelector('.state').textContent = stateText(view);
    const body = c.querySelector('tbody');
    const fill = (i) => view.counters.fill[i] ?? { inFlight: 0, size: 0 };
    // Queues that never carried anything and hold nothing (a console's unused ports) take no room.
    const idle = (q, i) => fill(i).inFlight === 0 && QUEUE_COLUMNS.every(([key]) => q[key] === 0);
    body.replaceChildren(
      ...view.counters.queues.map((q, i) => {
        const { inFlight, size } = fill(i);
        return el(
          'tr',
          { 'data-queue': String(i), class: idle(q, i) ? 'idle' : '' },
          el('td', {}, String(i)),
          el(
            'td',
            { class: 'fill' },
            el('meter', { min: '0', max: String(Math.max(size, 1)), value: String(inFlight) }),
            el('span', { 'data-gauge': 'inFlight' }, String(inFlight)),
            '/',
            el('span', { 'data-gauge': 'size' }, String(size)),
          ),
          ...QUEUE_COLUMNS.map(([key]) => el('td', { 'data-counter': key }, String(q[key]))),
        );
      }),
    );
    const idleCount = view.counters.queues.filter(idle).length;
    c.querySelector('.idle-queues').textContent = idleCount === 0 ? '' : `${idleCount} of ${view.counters.queues.length} queues idle`;
    c.querySelector('.counts').textContent = Object.entries(view.counters.device).map(([k, v]) => `${k} ${v}`).join(' · ');
  }
}

// --- console ---------------------------------------------------------------------------------

const term = new Terminal({ convertEol: false, scrollback: 5000, fontSize: 13, cursorBlink: true });
term.open($('terminal'));
const consoleSocket = new WebSocket(wsUrl('/ws/console'));
consoleSocket.binaryType = 'arraybuffer';
const encoder = new TextEncoder();
consoleSocket.addEventListener('message', (e) => term.write(new Uint8Array(e.data)));
consoleSocket.addEventListener('error', () => {
  $('console-none').hidden = false;
});
term.onData((text) => {
  if (consoleSocket.readyState === WebSocket.OPEN) consoleSocket.send(encoder.encode(text));
});

// --- display, keyboard and pointer -----------------------------------------------------------

const canvas = $('display');
const ctx = canvas.getContext('2d');
const displaySocket = new WebSocket(wsUrl('/ws/display'));
displaySocket.binaryType = 'arraybuffer';
displaySocket.addEventListener('message', (e) => {
  if (typeof e.data === 'string') {
    if (JSON.parse(e.data).t === 'none') $('display-none').hidden = false;
    return;
  }
  const words = new DataView(e.data);
  const kind = words.getUint32(0, true);
  if (kind === 0) {
    canvas.width = words.getUint32(4, true);
    canvas.height = words.getUint32(8, true);
  } else if (kind === 1) {
    const [x, y, w, h] = [4, 8, 12, 16].map((o) => words.getUint32(o, true));
    ctx.putImageData(new ImageData(new Uint8ClampedArray(e.data, 20, w * h * 4), w, h), x, y);
  }
});

const inputKinds = () => new Set(views.filter((v) => v.type === 'input').map((v) => v.state.kind));
const held = new Set();

function sendInput(body) {
  // Input is fire and forget; a refusal shows in the status line.
  request(body).then((reply) => {
    if (!reply.ok) setStatus(reply.error, true);
  });
}

canvas.addEventListener('keydown', (e) => {
  e.preventDefault();
  if (e.repeat) return; // the guest repeats keys itself
  held.add(e.code);
  sendInput({ op: 'key', code: e.code, down: true });
});
canvas.addEventListener('keyup', (e) => {
  e.preventDefault();
  if (!held.delete(e.code)) return;
  sendInput({ op: 'key', code: e.code, down: false });
});
// Keys still down when the display loses the keyboard are released, or the guest would see them held.
canvas.addEventListener('blur', () => {
  for (const code of held) sendInput({ op: 'key', code, down: false });
  held.clear();
});

let pointerFrame = 0;
canvas.addEventListener('pointermove', (e) => {
  const kinds = inputKinds();
  if (kinds.has('tablet')) {
    const r = canvas.getBoundingClientRect();
    const at = { x: Math.min(1, Math.max(0, (e.clientX - r.left) / r.width)), y: Math.min(1, Math.max(0, (e.clientY - r.top) / r.height)) };
    // One position per animation frame is all a screen can show.
    cancelAnimationFrame(pointerFrame);
    pointerFrame = requestAnimationFrame(() => sendInput({ op: 'pointer', ...at }));
  } else if (kinds.has('mouse') && (e.movementX !== 0 || e.movementY !== 0)) {
    sendInput({ op: 'move', dx: Math.round(e.movementX), dy: Math.round(e.movementY) });
  }
});
const BUTTONS = ['left', 'middle', 'right'];
for (const [type, down] of [['pointerdown', true], ['pointerup', false]]) {
  canvas.addEventListener(type, (e) => {
    if (down) canvas.focus();
    const button = BUTTONS[e.button];
    if (button !== undefined && (inputKinds().has('tablet') || inputKinds().has('mouse'))) sendInput({ op: 'button', button, down });
  });
}
canvas.addEventListener('contextmenu', (e) => e.preventDefault());
canvas.addEventListener('wheel', (e) => {
  e.preventDefault();
  if (e.deltaY !== 0 && (inputKinds().has('tablet') || inputKinds().has('mouse'))) sendInput({ op: 'wheel', clicks: e.deltaY < 0 ? 1 : -1 });
}, { passive: false });

// For tests and the curious: the terminal's text as shown.
window.paravirt = {
  terminalText: () => {
    const b = term.buffer.active;
    const lines = [];
    for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true));
    return lines.join('\n');
  },
};
