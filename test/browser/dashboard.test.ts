/**
 * The dashboard in a real browser against a running VM: Debian's Chromium, headless, driven by
 * playwright-core, shows the page a back-end process serves while a stock Linux guest uses that
 * process's devices (a console, a balloon, a keyboard and a tablet over vhost-user, a virtio-gpu
 * over vfio-user). What a user would check: the guest's prompt in the page's console and a
 * command typed there running in the guest, a key pressed on the page's display arriving in the
 * guest's /dev/input/eventN, a balloon target set on the page moving what the guest reports as
 * `actual`, the guest's framebuffer pattern on the page's canvas, and counters on the page
 * moving with it all.
 *
 * Set DASHBOARD_SCREENSHOT=FILE to keep a picture of the page at the end (docs/dashboard.png).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { pino } from 'pino';
import { chromium, type Page } from 'playwright-core';
import type { BalloonDevice } from '../../src/devices/balloon/device.ts';
import { KEY_CODES } from '../../src/devices/input/keys.ts';
import { EvType, SYN_REPORT } from '../../src/devices/input/wire.ts';
import { deviceType } from '../../src/devices/registry.ts';
import { startDashboard } from '../../src/dashboard/server.ts';
import { Backend } from '../../src/run/backend.ts';
import { bootGuest, shareDir } from '../lab/guest.ts';
import { eventNode, readRecords, startReader } from '../lab/guest-input.ts';
import { requireLab } from '../lab/require.ts';

/** Debian's chromium package; `npm run lab:setup` installs it. Nothing is downloaded. */
const CHROMIUM = '/usr/bin/chromium';
const GUEST_MiB = 512;
/** The graphics device's mode, and where the guest draws its pattern. */
const WIDTH = 640;
const HEIGHT = 480;
const PATTERN_TOP = 200;
const PATTERN_ROWS = 32;

/** The guest's pattern: no two neighbouring pixels alike. Also evaluated in the page, so plain JavaScript. */
const pattern = (x: number, y: number): number[] => [(x * 5 + y * 3) & 0xff, (x + y * 11) & 0xff, (x * y) & 0xff];
const MiB = 1024 * 1024;
/** Generous: the guest runs under TCG on a shared machine. */
const PAGE_TIMEOUT_MS = 120_000;

function chromiumUnavailable(): string | undefined {
  return existsSync(CHROMIUM) ? undefined : `${CHROMIUM} is missing (Debian's chromium package; \`sudo npm run lab:setup\` installs it)`;
}

/** The page's number in a counter cell of one device's queue. */
function counterCell(device: string, queue: number, counter: string): string {
  return `[data-device="${device}"] tr[data-queue="${queue}"] td[data-counter="${counter}"]`;
}

/** A page expression: the console's terminal shows `text` (app.js exposes its text for this). */
function terminalShows(text: string): string {
  return `window.paravirt.terminalText().includes(${JSON.stringify(text)})`;
}

async function counter(page: Page, device: string, queue: number, name: string): Promise<number> {
  return Number(await page.locator(counterCell(device, queue, name)).textContent());
}

/** The page's number for one of a queue's fill gauges ('inFlight' or 'size'). */
function gaugeCell(device: string, queue: number, gauge: string): string {
  return `[data-device="${device}"] tr[data-queue="${queue}"] [data-gauge="${gauge}"]`;
}

/** Waits until the page shows `device`'s queue counter above `than`. */
async function counterAbove(page: Page, device: string, queue: number, name: string, than: number): Promise<number> {
  // Evaluated in the page (an expression: this file is not compiled against the DOM's types).
  await page.waitForFunction(`Number(document.querySelector(${JSON.stringify(counterCell(device, queue, name))})?.textContent) > ${than}`);
  return counter(page, device, queue, name);
}

test('dashboard in Chromium against a running guest: console, keyboard, balloon, display and counters', { timeout: 900_000 }, async (t) => {
  if (!requireLab(t) || !requireLab(t, chromiumUnavailable())) return;
  const log = pino({ level: process.env.PARAVIRT_LOG ?? 'warn' });
  const share = shareDir(t, 'dashboard');
  const type = (name: string) => deviceType(name)!;
  const backend = await Backend.start(
    {
      socketDir: share.dir,
      console: 'console0',
      devices: [
        { id: 'console0', type: type('console'), values: {} },
        { id: 'balloon0', type: type('balloon'), values: {} },
        { id: 'keyboard0', type: type('input'), values: { kind: 'keyboard' } },
        { id: 'tablet0', type: type('input'), values: { kind: 'tablet' } },
        // QEMU has no vhost-user-gpu for a 2D back-end: the whole PCI function over vfio-user.
        { id: 'gpu0', type: type('gpu'), values: { width: WIDTH, height: HEIGHT }, transport: 'vfio-user' },
      ],
    },
    log,
  );
  // Undone last first: QEMU goes before the back-end, since it talks vhost-user synchronously
  // and would wait on a back-end that left.
  const undo: (() => Promise<void>)[] = [];
  t.after(async () => {
    for (const step of undo.reverse()) await step();
  });
  undo.push(() => backend.close());
  const dashboard = await startDashboard({ listen: { host: '127.0.0.1', port: 0 }, backend, log });
  undo.push(() => dashboard.close());
  const socket = (id: string) => share.qemuPath(backend.device(id)!.socketPath);
  const guest = await bootGuest({
    name: 'dashboard',
    memoryMiB: GUEST_MiB,
    // Five devices to probe under TCG on a shared machine: more than the default minute.
    timeoutMs: 240_000,
    devices: [
      '-chardev', `socket,id=con0,path=${socket('console0')}`,
      '-device', 'vhost-user-test-device-pci,chardev=con0,virtio-id=3,num_vqs=18,config_size=12',
      '-chardev', `socket,id=bal0,path=${socket('balloon0')}`,
      '-device', 'vhost-user-test-device-pci,chardev=bal0,virtio-id=5,num_vqs=4,config_size=16',
      '-chardev', `socket,id=kbd0,path=${socket('keyboard0')}`, '-device', 'vhost-user-input-pci,chardev=kbd0',
      '-chardev', `socket,id=tab0,path=${socket('tablet0')}`, '-device', 'vhost-user-input-pci,chardev=tab0',
      '-device', JSON.stringify({ driver: 'vfio-user-pci', socket: { path: socket('gpu0'), type: 'unix' } }),
    ],
  });
  undo.push(() => guest.shutdown());
  await guest.check('modprobe evdev');

  // As root (the lab's user) Chromium runs only without its sandbox.
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  undo.push(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.setDefaultTimeout(PAGE_TIMEOUT_MS);
  await page.goto(dashboard.url);

  await t.test('the console shows the guest prompt, and a command typed in the page runs in the guest', async () => {
    const transmitq = 1; // port 0's transmitq (§5.3.2): what the guest wrote to hvc0
    const before = await counter(page, 'console0', transmitq, 'requests').catch(() => 0);
    await guest.check("setsid sh -c 'PS1=\"guest# \" exec sh -i <>/dev/hvc0 >&0 2>&0' >/dev/null 2>&1 </dev/null &");
    await page.waitForFunction(terminalShows('guest# '));
    await page.locator('#terminal').click();
    await page.keyboard.type('echo $((6*7)) > /tmp/typed; echo DONE$((40+2))\n');
    await page.waitForFunction(terminalShows('DONE42'));
    assert.equal(await guest.check('cat /tmp/typed'), '42\n');
    assert.ok((await counterAbove(page, 'console0', transmitq, 'requests', before)) > before, 'the console transmitq counted what the guest wrote');
  });

  await t.test('a key pressed on the page arrives in the guest /dev/input/eventN', async () => {
    const node = await eventNode(guest, 'paravirt virtio keyboard');
    const display = page.locator('#display');
    await display.click(); // the display takes the keyboard
    await startReader(guest, node, 4);
    await page.keyboard.press('KeyA');
    assert.deepEqual(await readRecords(guest, 4), [
      [EvType.KEY, KEY_CODES.a, 1],
      [EvType.SYN, SYN_REPORT, 0],
      [EvType.KEY, KEY_CODES.a, 0],
      [EvType.SYN, SYN_REPORT, 0],
    ]);
    assert.equal(await counterAbove(page, 'keyboard0', 0, 'requests', 3), 4, 'the eventq used one buffer per event');
  });

  await t.test('a balloon target set on the page moves the guest actual', async () => {
    const balloon = backend.device('balloon0')!.instance.devices[0] as BalloonDevice;
    const card = page.locator('[data-device="balloon0"]');
    await card.locator('[data-control="balloon-mib"]').fill('64');
    await card.locator('[data-control="balloon-set"]').click();
    // The guest driver inflates and writes how much it holds into `actual` (§5.5.6).
    while (balloon.status().actualBytes !== 64 * MiB) await once(balloon, 'actual');
    await card.locator('.state').filter({ hasText: 'actual 64 MiB' }).waitFor();
    assert.ok((await counter(page, 'balloon0', 0, 'requests')) > 0, 'the inflateq counted the page numbers the guest sent');
    // The guest's driver posts one statistics buffer, which the device holds until it wants
    // statistics (§5.5.6.3): the statsq's fill shows it, of the ring's size.
    const statsq = 2;
    await page.waitForFunction(`document.querySelector(${JSON.stringify(gaugeCell('balloon0', statsq, 'inFlight'))})?.textContent === '1'`);
    const size = Number(await page.locator(gaugeCell('balloon0', statsq, 'size')).textContent());
    assert.equal(size, balloon.counters.snapshot().fill[statsq].size);
    assert.ok(size > 0, 'the page shows the ring size the guest chose');
  });

  await t.test("the display canvas shows the guest's framebuffer pattern", async () => {
    // virtio_gpu binds and fbdev makes /dev/fb0; fbcon stops drawing so that only the pattern writes.
    await guest.check('until [ -e /dev/fb0 ]; do sleep 0.1; done; for v in /sys/class/vtconsole/vtcon*; do grep -q "frame buffer" $v/name && echo 0 > $v/bind; done; true', { timeoutMs: 120_000 });
    const stride = Number((await guest.check('cat /sys/class/graphics/fb0/stride')).trim());
    const rows = Buffer.alloc(stride * PATTERN_ROWS);
    for (let y = 0; y < PATTERN_ROWS; y++) {
      for (let x = 0; x < WIDTH; x++) {
        const [r, g, b] = pattern(x, PATTERN_TOP + y);
        rows.set([b, g, r, 0], y * stride + x * 4); // XRGB8888
      }
    }
    const flushes = await counter(page, 'gpu0', 0, 'requests');
    await guest.check(`printf '%s' '${rows.toString('base64')}' | base64 -d | dd of=/dev/fb0 bs=${stride} seek=${PATTERN_TOP} conv=notrunc 2>/dev/null`);
    // Every pixel of the pattern's rows, read back from the page's canvas.
    await page.waitForFunction(`(() => {
      const pattern = ${pattern.toString()};
      const canvas = document.getElementById('display');
      if (canvas.width !== ${WIDTH} || canvas.height !== ${HEIGHT}) return false;
      const data = canvas.getContext('2d').getImageData(0, ${PATTERN_TOP}, ${WIDTH}, ${PATTERN_ROWS}).data;
      for (let y = 0; y < ${PATTERN_ROWS}; y++) for (let x = 0; x < ${WIDTH}; x++) {
        const want = pattern(x, ${PATTERN_TOP} + y), o = (y * ${WIDTH} + x) * 4;
        if (data[o] !== want[0] || data[o + 1] !== want[1] || data[o + 2] !== want[2]) return false;
      }
      return true;
    })()`);
    assert.ok((await counterAbove(page, 'gpu0', 0, 'requests', flushes)) > flushes, 'the controlq counted the transfers and flushes');
  });

  if (process.env.DASHBOARD_SCREENSHOT !== undefined) await page.screenshot({ path: process.env.DASHBOARD_SCREENSHOT, fullPage: true });
});
