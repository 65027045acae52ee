/**
 * A VESA EDID 1.4 base block (128 bytes) for one mode, which GET_EDID returns (§5.7.6.8): the
 * mode as the preferred detailed timing and no other timings, so a driver that builds its mode
 * list from the EDID (Linux's virtio_gpu does) offers exactly the configured resolution.
 */

/** Largest side a detailed timing descriptor can carry (12-bit fields). */
export const EDID_MAX_SIDE = 4095;

/** Blanking around the active area (close to CVT reduced blanking), in pixels and lines. */
const H_FRONT = 48;
const H_SYNC = 32;
const H_BLANK = 160;
const V_FRONT = 3;
const V_SYNC = 5;
const V_BLANK = 31;

/** The refresh a mode is described at, lowered when the pixel clock would not fit 16 bits of 10 kHz. */
const REFRESH_HZ = 60;

/** The common sRGB primaries and white point, as EDID's 10-byte chromaticity block. */
const SRGB_CHROMATICITY = [0xee, 0x91, 0xa3, 0x54, 0x4c, 0x99, 0x26, 0x0f, 0x50, 0x54];

export function buildEdid(width: number, height: number, name = 'paravirt'): Uint8Array {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1 || width > EDID_MAX_SIDE || height > EDID_MAX_SIDE) {
    throw new RangeError(`EDID mode ${width}x${height} is not between 1x1 and ${EDID_MAX_SIDE}x${EDID_MAX_SIDE}`);
  }
  const e = new Uint8Array(128);
  e.set([0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00], 0);
  // Manufacturer "PVT": three 5-bit letters, big-endian.
  const letters = 'PVT'.split('').map((c) => c.charCodeAt(0) - 64);
  const mfg = (letters[0]! << 10) | (letters[1]! << 5) | letters[2]!;
  e[8] = mfg >> 8;
  e[9] = mfg & 0xff;
  e[10] = 0x01; // product code 0x0001, little-endian
  e[16] = 0; // week unknown
  e[17] = 2026 - 1990;
  e[18] = 1; // EDID 1.4
  e[19] = 4;
  e[20] = 0x80; // digital input
  // Physical size at 96 dots per inch: centimetres here, millimetres in the timing descriptor.
  const mmW = Math.round((width * 25.4) / 96);
  const mmH = Math.round((height * 25.4) / 96);
  e[21] = Math.min(255, Math.max(1, Math.round(mmW / 10)));
  e[22] = Math.min(255, Math.max(1, Math.round(mmH / 10)));
  e[23] = 120; // gamma 2.2
  e[24] = 0x06; // sRGB default colour space, preferred timing is the native mode
  e.set(SRGB_CHROMATICITY, 25);
  // Bytes 35-37: no established timings. Bytes 38-53: eight unused standard timings.
  for (let i = 38; i < 54; i++) e[i] = 0x01;
  detailedTiming(e, 54, width, height, mmW, mmH);
  textDescriptor(e, 72, 0xfc, name);
  textDescriptor(e, 90, 0xff, '0');
  // Bytes 108-125: a dummy descriptor (tag 0x10), as EDID 1.4 wants unused slots to be.
  e[111] = 0x10;
  e[126] = 0; // no extension blocks
  e[127] = (256 - (e.reduce((s, b) => s + b, 0) % 256)) % 256;
  return e;
}

function detailedTiming(e: Uint8Array, at: number, w: number, h: number, mmW: number, mmH: number): void {
  const total = (w + H_BLANK) * (h + V_BLANK);
  const refresh = Math.max(1, Math.min(REFRESH_HZ, Math.floor(0xffff * 10000 / total)));
  const clock = Math.ceil((total * refresh) / 10000);
  e[at] = clock & 0xff;
  e[at + 1] = clock >> 8;
  e[at + 2] = w & 0xff;
  e[at + 3] = H_BLANK & 0xff;
  e[at + 4] = ((w >> 8) << 4) | (H_BLANK >> 8);
  e[at + 5] = h & 0xff;
  e[at + 6] = V_BLANK & 0xff;
  e[at + 7] = ((h >> 8) << 4) | (V_BLANK >> 8);
  e[at + 8] = H_FRONT & 0xff;
  e[at + 9] = H_SYNC & 0xff;
  e[at + 10] = ((V_FRONT & 0xf) << 4) | (V_SYNC & 0xf);
  e[at + 11] = ((H_FRONT >> 8) << 6) | ((H_SYNC >> 8) << 4) | ((V_FRONT >> 4) << 2) | (V_SYNC >> 4);
  e[at + 12] = mmW & 0xff;
  e[at + 13] = mmH & 0xff;
  e[at + 14] = ((mmW >> 8) << 4) | (mmH >> 8);
  e[at + 17] = 0x1e; // digital separate sync, both polarities positive
}

/** A display descriptor holding up to 13 characters of text (0xfc: name, 0xff: serial). */
function textDescriptor(e: Uint8Array, at: number, tag: number, text: string): void {
  e[at + 3] = tag;
  const bytes = Array.from(text.slice(0, 13), (c) => c.charCodeAt(0) & 0x7f);
  if (bytes.length < 13) bytes.push(0x0a);
  while (bytes.length < 13) bytes.push(0x20);
  e.set(bytes, at + 5);
}
