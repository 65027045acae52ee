/**
 * The host's hands on an input device: commands as text lines, one answer line each, over a
 * Unix socket (`paravirt serve input --control-socket PATH`), so a shell (`socat`, `nc -U`), a
 * test or a dashboard can type into the guest.
 *
 *   key NAME [down|up]     press and release (or only press, only release) a key: "a", "enter", "#30"
 *   type TEXT              type the rest of the line (US layout; \n for Enter)
 *   button NAME [down|up]  left, right or middle
 *   move DX DY             relative motion (mouse)
 *   wheel N                wheel clicks
 *   abs X Y                absolute position (tablet; 0..32767)
 *   leds                   the LED state the guest set: "leds numlock=0 capslock=1 scrolllock=0"
 *
 * Answers: "ok", "leds ...", or "error <one sentence>" (a dropped event says so).
 */
import { type LocalServer, listenLocal, readLines } from '../local-socket.ts';
import type { InputDevice } from './device.ts';
import { BUTTON_CODES, keyCode, strokes } from './keys.ts';
import { Abs, EvType, KEY_SHIFT, Led, Rel } from './wire.ts';

/** A line longer than this is refused and the connection closed: nothing legitimate is that long. */
const MAX_LINE = 4096;

function parseInt32(s: string | undefined): number | undefined {
  if (s === undefined || !/^-?\d{1,10}$/.test(s)) return undefined;
  const n = Number(s);
  return n >= -(2 ** 31) && n < 2 ** 31 ? n : undefined;
}

/** Run one command line against `device`; returns the answer line (without newline). */
export function runInputCommand(device: InputDevice, line: string): string {
  const [verb = '', ...args] = line.trim().split(/\s+/);
  const sent = (ok: boolean): string => (ok ? 'ok' : 'error dropped: no driver is running or the guest posted no buffers.');
  const upDown = (word: string | undefined): 'both' | 'down' | 'up' | undefined =>
    word === undefined ? 'both' : word === 'down' || word === 'up' ? word : undefined;
  const press = (code: number, how: 'both' | 'down' | 'up'): boolean =>
    how === 'both' ? device.key(code, true) && device.key(code, false) : device.key(code, how === 'down');
  switch (verb) {
    case 'key':
    case 'button': {
      const code = verb === 'key' ? keyCode(args[0] ?? '') : BUTTON_CODES[args[0] ?? ''];
      const how = upDown(args[1]);
      if (code === undefined) return `error ${verb} "${args[0] ?? ''}" is not one this device knows.`;
      if (how === undefined || args.length > 2) return `error ${verb} takes a name and optionally down or up.`;
      return sent(press(code, how));
    }
    case 'type': {
      const text = line.replace(/^\s*type\s/, '').replace(/\\n/g, '\n');
      const keys = strokes(text);
      if ('untypable' in keys) return `error "${keys.untypable}" cannot be typed on a US keyboard.`;
      for (const k of keys) {
        const ok = k.shift
          ? device.key(KEY_SHIFT, true) && press(k.code, 'both') && device.key(KEY_SHIFT, false)
          : press(k.code, 'both');
        if (!ok) return sent(false);
      }
      return 'ok';
    }
    case 'move':
    case 'abs': {
      const [x, y] = [parseInt32(args[0]), parseInt32(args[1])];
      if (x === undefined || y === undefined || args.length !== 2) return `error ${verb} takes two integers.`;
      const type = verb === 'move' ? EvType.REL : EvType.ABS;
      const [cx, cy] = verb === 'move' ? [Rel.X, Rel.Y] : [Abs.X, Abs.Y];
      return sent(device.send([{ type, code: cx, value: x }, { type, code: cy, value: y }]));
    }
    case 'wheel': {
      const n = parseInt32(args[0]);
      if (n === undefined || args.length !== 1) return 'error wheel takes one integer.';
      return sent(device.send([{ type: EvType.REL, code: Rel.WHEEL, value: n }]));
    }
    case 'leds': {
      const state = (code: number): number => device.ledState.get(code) ?? 0;
      return `leds numlock=${state(Led.NUML)} capslock=${state(Led.CAPSL)} scrolllock=${state(Led.SCROLLL)}`;
    }
    default:
      return `error "${verb}" is not a command (key, type, button, move, wheel, abs, leds).`;
  }
}

/** Serve runInputCommand on a Unix socket at `path` (replacing a stale socket). */
export function listenInputControl(device: InputDevice, path: string): Promise<LocalServer> {
  return listenLocal(path, 'input control socket', (socket) =>
    readLines(
      socket,
      MAX_LINE,
      (line) => {
        if (line.trim() !== '') socket.write(`${runInputCommand(device, line)}\n`);
      },
      () => socket.end(`error a command line is longer than ${MAX_LINE} bytes.\n`),
    ),
  );
}
