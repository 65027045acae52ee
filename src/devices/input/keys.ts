/**
 * Key codes by name (evdev's KEY_* of input-event-codes.h, US layout) and text as key strokes,
 * so a host can type "hello world\n" into a guest.
 */
import { Btn } from './wire.ts';

const LETTERS: Record<string, number> = {
  q: 16, w: 17, e: 18, r: 19, t: 20, y: 21, u: 22, i: 23, o: 24, p: 25,
  a: 30, s: 31, d: 32, f: 33, g: 34, h: 35, j: 36, k: 37, l: 38,
  z: 44, x: 45, c: 46, v: 47, b: 48, n: 49, m: 50,
};

/** KEY_* names without the prefix, lower case. */
export const KEY_CODES: Readonly<Record<string, number>> = {
  ...LETTERS,
  esc: 1, '1': 2, '2': 3, '3': 4, '4': 5, '5': 6, '6': 7, '7': 8, '8': 9, '9': 10, '0': 11,
  minus: 12, equal: 13, backspace: 14, tab: 15, leftbrace: 26, rightbrace: 27, enter: 28,
  leftctrl: 29, semicolon: 39, apostrophe: 40, grave: 41, leftshift: 42, backslash: 43,
  comma: 51, dot: 52, slash: 53, rightshift: 54, leftalt: 56, space: 57, capslock: 58,
  f1: 59, f2: 60, f3: 61, f4: 62, f5: 63, f6: 64, f7: 65, f8: 66, f9: 67, f10: 68,
  numlock: 69, scrolllock: 70, f11: 87, f12: 88, rightctrl: 97, rightalt: 100,
  home: 102, up: 103, pageup: 104, left: 105, right: 106, end: 107, down: 108, pagedown: 109,
  insert: 110, delete: 111,
};

export const BUTTON_CODES: Readonly<Record<string, number>> = { left: Btn.LEFT, right: Btn.RIGHT, middle: Btn.MIDDLE };

const PLAIN: Record<string, string> = {
  ' ': 'space', '\n': 'enter', '\t': 'tab', '-': 'minus', '=': 'equal', '[': 'leftbrace', ']': 'rightbrace',
  ';': 'semicolon', "'": 'apostrophe', '`': 'grave', '\\': 'backslash', ',': 'comma', '.': 'dot', '/': 'slash',
};
const SHIFTED: Record<string, string> = {
  '!': '1', '@': '2', '#': '3', $: '4', '%': '5', '^': '6', '&': '7', '*': '8', '(': '9', ')': '0',
  _: 'minus', '+': 'equal', '{': 'leftbrace', '}': 'rightbrace', ':': 'semicolon', '"': 'apostrophe',
  '~': 'grave', '|': 'backslash', '<': 'comma', '>': 'dot', '?': 'slash',
};

/** One character typed: its key and whether shift is held. */
export interface Stroke {
  readonly code: number;
  readonly shift: boolean;
}

/** The key code called `name` ("a", "enter", "KEY_ENTER") or written "#30", or undefined. */
export function keyCode(name: string): number | undefined {
  if (/^#\d{1,4}$/.test(name)) return Number(name.slice(1));
  return KEY_CODES[name.toLowerCase().replace(/^key_/, '')];
}

/** The strokes that type `text` on a US keyboard, or the first character that has none. */
export function strokes(text: string): Stroke[] | { readonly untypable: string } {
  const out: Stroke[] = [];
  for (const ch of text) {
    const lower = ch.toLowerCase();
    let name: string | undefined;
    let shift = false;
    if (/^[a-z0-9]$/.test(lower)) {
      name = lower;
      shift = ch !== lower;
    } else if (PLAIN[ch] !== undefined) {
      name = PLAIN[ch];
    } else if (SHIFTED[ch] !== undefined) {
      name = SHIFTED[ch];
      shift = true;
    }
    if (name === undefined) return { untypable: ch };
    out.push({ code: KEY_CODES[name], shift });
  }
  return out;
}
