/**
 * A browser's physical key names (KeyboardEvent.code, W3C "UI Events KeyboardEvent code Values")
 * as evdev key codes, so a key pressed in the dashboard is the same key on the guest's keyboard
 * whatever layout the browser's user has: the code names the key's position, and the guest
 * applies its own layout, as with a USB keyboard.
 */
import { KEY_CODES } from '../devices/input/keys.ts';

/** Codes whose evdev name is not derived from the code by a rule below. */
const NAMED: Readonly<Record<string, string>> = {
  Escape: 'esc', Minus: 'minus', Equal: 'equal', Backspace: 'backspace', Tab: 'tab',
  BracketLeft: 'leftbrace', BracketRight: 'rightbrace', Enter: 'enter', ControlLeft: 'leftctrl',
  Semicolon: 'semicolon', Quote: 'apostrophe', Backquote: 'grave', ShiftLeft: 'leftshift',
  Backslash: 'backslash', Comma: 'comma', Period: 'dot', Slash: 'slash', ShiftRight: 'rightshift',
  AltLeft: 'leftalt', Space: 'space', CapsLock: 'capslock', NumLock: 'numlock',
  ScrollLock: 'scrolllock', ControlRight: 'rightctrl', AltRight: 'rightalt', Home: 'home',
  ArrowUp: 'up', PageUp: 'pageup', ArrowLeft: 'left', ArrowRight: 'right', End: 'end',
  ArrowDown: 'down', PageDown: 'pagedown', Insert: 'insert', Delete: 'delete',
};

/** The evdev code of the key the browser calls `code` ("KeyA", "Digit1", "F5", "ArrowUp"), or undefined. */
export function evdevKey(code: string): number | undefined {
  const m = /^(?:Key([A-Z])|Digit([0-9])|(F(?:[1-9]|1[0-2])))$/.exec(code);
  const name = m !== null ? (m[1] ?? m[2] ?? m[3]).toLowerCase() : Object.hasOwn(NAMED, code) ? NAMED[code] : undefined;
  return name === undefined ? undefined : KEY_CODES[name];
}
