/**
 * What the device does with each command a QXL driver puts in its rings (QEMU hands them to
 * spice-server's worker; this is that worker's software-canvas part): drawables drawn into their
 * surface, off-screen surfaces created and destroyed, the cursor set, moved and hidden. Every
 * command is released back to the driver once done, since nothing keeps a reference to it.
 *
 * Drawables this device does not render (other than NOP, FILL with a solid brush and COPY of a
 * bitmap, with OP_PUT and no mask) are counted and released: Linux's qxl sends only COPY (its
 * framebuffer damage, qxl_draw_dirty_fb) among them.
 *
 * A drawable is checked whole first, then painted a band of rows at a time within the pixel
 * budget its caller gives: one that paints more is left half-done (`busy`) and `resume`d in a
 * later turn of the event loop, and released only once it is painted.
 */
import { GuestBug, type MemSlots, type Span } from './memslots.ts';
import { type Painting, type Surface, copy, drawnAreas, fill, placeSurface, readBitmap, readChunks, readClipRects } from './render.ts';
import { N_SURFACES } from './rom.ts';
import {
  BrushType,
  ClipType,
  CommandType,
  Copy,
  Cursor,
  CursorCmd,
  CursorCmdType,
  CursorType,
  DrawType,
  Drawable,
  Fill,
  Image,
  ImageType,
  RELEASE_INFO_SIZE,
  ROPD_OP_PUT,
  type Rect,
  SurfaceCmd,
  SurfaceCmdType,
  SurfaceFormat,
  readRect,
} from './wire.ts';

/** What a drawable costs before it is painted (bitmap pixels read) and its painting, if any. */
interface Drawing {
  readonly read: number;
  readonly painting?: Painting;
}

/** Largest cursor shape accepted (Linux sends 64x64). */
export const MAX_CURSOR_DIMENSION = 256;

export interface CursorState {
  visible: boolean;
  x: number;
  y: number;
  width: number;
  height: number;
  hotX: number;
  hotY: number;
  /** The shape as a8r8g8b8, row 0 first. */
  argb: Uint8Array;
}

export interface WorkerContext {
  /** Surface 0, created by the CREATE_PRIMARY port rather than a command. */
  primary(): Surface | undefined;
  readonly counters: { draws: number; fills: number; copies: number; unsupportedDraws: number; surfaceCommands: number; cursorCommands: number };
  /** `areas` of surface `id` changed. */
  drawn(id: number, areas: readonly Rect[]): void;
  /** Hand a command back: `info` is its release_info. */
  release(info: { view: DataView; offset: number }): void;
}

export class QxlWorker {
  private readonly surfaces = new Map<number, Surface>();
  /** A drawable painted in part: the rest of it and the release waiting for it. */
  private pending: { painting: Painting; release: Span } | undefined;
  cursor: CursorState | undefined;

  constructor(
    private readonly slots: MemSlots,
    private readonly ctx: WorkerContext,
  ) {}

  reset(): void {
    this.surfaces.clear();
    this.cursor = undefined;
    this.pending = undefined;
  }

  /** A drawable is painted in part: resume it before the next command. */
  get busy(): boolean {
    return this.pending !== undefined;
  }

  destroySurface(id: number): void {
    this.surfaces.delete(id);
  }

  /**
   * Run one command of `type` whose structure is at QXLPHYSICAL `data`, painting about `budget`
   * pixels of it at most (the rest waits for resume()); a GuestBug leaves it unreleased. Returns
   * the pixels it touched (drawn, shown and read from bitmaps): the work charged to the budget.
   */
  execute(type: number, data: bigint, budget: number): number {
    let drawing: Drawing | undefined;
    switch (type) {
      case CommandType.NOP:
        return 0;
      case CommandType.DRAW:
        drawing = this.draw(data);
        break;
      case CommandType.SURFACE:
        this.surface(data);
        break;
      case CommandType.CURSOR:
        this.cursorCommand(data);
        break;
      case CommandType.UPDATE:
      case CommandType.MESSAGE:
        break;
      default:
        throw new GuestBug(`command type ${type} is unknown`);
    }
    const info = this.slots.span(data, RELEASE_INFO_SIZE, 'release info');
    if (drawing?.painting === undefined) {
      this.ctx.release(info);
      return drawing?.read ?? 0;
    }
    this.pending = { painting: drawing.painting, release: info };
    return drawing.read + this.resume(budget - drawing.read);
  }

  /** Paint about `budget` more pixels of the drawable in part painted, releasing it once done; returns the pixels painted. */
  resume(budget: number): number {
    const p = this.pending;
    if (p === undefined) return 0;
    const pixels = p.painting.paint(budget);
    if (p.painting.done) {
      this.pending = undefined;
      this.ctx.release(p.release);
    }
    return pixels;
  }

  private target(id: number): Surface {
    const s = id === 0 ? this.ctx.primary() : this.surfaces.get(id);
    if (s === undefined) throw new GuestBug(`drawable targets surface ${id}, which does not exist`);
    return s;
  }

  /** A drawable, checked and ready to paint. */
  private draw(data: bigint): Drawing | undefined {
    this.ctx.counters.draws++;
    const head = this.slots.span(data, Drawable.U, 'drawable');
    const v = head.view;
    const at = head.offset;
    const type = v.getUint8(at + Drawable.TYPE);
    if (type === DrawType.NOP) return undefined;
    if (type !== DrawType.FILL && type !== DrawType.COPY) {
      this.ctx.counters.unsupportedDraws++;
      return undefined;
    }
    const id = v.getUint32(at + Drawable.SURFACE_ID, true);
    const surface = this.target(id);
    const bbox = readRect(v, at + Drawable.BBOX);
    const clipType = v.getUint32(at + Drawable.CLIP_TYPE, true);
    let clips: Rect[] | undefined;
    if (clipType === ClipType.RECTS) clips = readClipRects(this.slots, v.getBigUint64(at + Drawable.CLIP_DATA, true));
    else if (clipType !== ClipType.NONE) throw new GuestBug(`clip type ${clipType} is unknown`);
    const areas = drawnAreas(surface, bbox, clips);
    const painted = (band: Rect): void => this.ctx.drawn(id, [band]);
    return type === DrawType.FILL ? this.fill(data, surface, areas, painted) : this.copy(data, surface, areas, bbox, painted);
  }

  private fill(data: bigint, surface: Surface, areas: Rect[], painted: (band: Rect) => void): Drawing | undefined {
    const op = this.slots.span(data, Drawable.U + Fill.SIZE, 'fill drawable');
    const at = op.offset + Drawable.U;
    const v = op.view;
    const solid = v.getUint32(at + Fill.BRUSH_TYPE, true) === BrushType.SOLID;
    if (!solid || v.getUint16(at + Fill.ROP_DESCRIPTOR, true) !== ROPD_OP_PUT || v.getBigUint64(at + Fill.MASK_BITMAP, true) !== 0n) {
      this.ctx.counters.unsupportedDraws++;
      return undefined;
    }
    this.ctx.counters.fills++;
    return { read: 0, painting: fill(surface, areas, v.getUint32(at + Fill.BRUSH_COLOR, true), painted) };
  }

  /** A COPY's bitmap is read out of guest memory at once; its pixels count as work read. */
  private copy(data: bigint, surface: Surface, areas: Rect[], bbox: Rect, painted: (band: Rect) => void): Drawing | undefined {
    const op = this.slots.span(data, Drawable.U + Copy.SIZE, 'copy drawable');
    const at = op.offset + Drawable.U;
    const v = op.view;
    if (v.getUint16(at + Copy.ROP_DESCRIPTOR, true) !== ROPD_OP_PUT || v.getBigUint64(at + Copy.MASK_BITMAP, true) !== 0n) {
      this.ctx.counters.unsupportedDraws++;
      return undefined;
    }
    const src = readRect(v, at + Copy.SRC_AREA);
    const image = this.slots.span(v.getBigUint64(at + Copy.SRC_BITMAP, true), Image.SIZE, 'copy image');
    const iv = image.view;
    const io = image.offset;
    if (iv.getUint8(io + Image.TYPE) !== ImageType.BITMAP) {
      this.ctx.counters.unsupportedDraws++;
      return undefined;
    }
    if (areas.length === 0) return undefined;
    const bitmap = readBitmap(
      this.slots,
      iv.getUint8(io + Image.BITMAP_FORMAT),
      iv.getUint8(io + Image.BITMAP_FLAGS),
      iv.getUint32(io + Image.BITMAP_X, true),
      iv.getUint32(io + Image.BITMAP_Y, true),
      iv.getUint32(io + Image.BITMAP_STRIDE, true),
      iv.getBigUint64(io + Image.BITMAP_DATA, true),
    );
    const painting = copy(surface, areas, bbox, bitmap, src, painted);
    this.ctx.counters.copies++;
    return { read: bitmap.width * bitmap.height, painting };
  }

  /** QXL_CMD_SURFACE: an off-screen surface created in, or destroyed from, guest memory. */
  private surface(data: bigint): void {
    this.ctx.counters.surfaceCommands++;
    const cmd: Span = this.slots.span(data, SurfaceCmd.SIZE, 'surface command');
    const v = cmd.view;
    const at = cmd.offset;
    const id = v.getUint32(at + SurfaceCmd.SURFACE_ID, true);
    if (id === 0 || id >= N_SURFACES) throw new GuestBug(`surface command for surface ${id}, outside 1..${N_SURFACES - 1}`);
    const type = v.getUint8(at + SurfaceCmd.TYPE);
    if (type === SurfaceCmdType.DESTROY) {
      this.surfaces.delete(id);
      return;
    }
    if (type !== SurfaceCmdType.CREATE) throw new GuestBug(`surface command type ${type} is unknown`);
    const format = v.getUint32(at + SurfaceCmd.FORMAT, true);
    if (format !== SurfaceFormat.X_RGB_32 && format !== SurfaceFormat.A_RGB_32) {
      // A surface this device cannot draw on: drawables for it will find no target.
      this.surfaces.delete(id);
      return;
    }
    const surface = placeSurface(
      this.slots,
      v.getBigUint64(at + SurfaceCmd.DATA, true),
      v.getUint32(at + SurfaceCmd.WIDTH, true),
      v.getUint32(at + SurfaceCmd.HEIGHT, true),
      v.getInt32(at + SurfaceCmd.STRIDE, true),
      format,
      `surface ${id}`,
    );
    this.surfaces.set(id, surface);
  }

  /** QXL_CMD_CURSOR: SET (shape and position), MOVE, HIDE; TRAIL changes nothing shown. */
  private cursorCommand(data: bigint): void {
    this.ctx.counters.cursorCommands++;
    const cmd = this.slots.span(data, CursorCmd.SIZE, 'cursor command');
    const v = cmd.view;
    const at = cmd.offset;
    const type = v.getUint8(at + CursorCmd.TYPE);
    const x = v.getInt16(at + CursorCmd.POSITION_X, true);
    const y = v.getInt16(at + CursorCmd.POSITION_Y, true);
    switch (type) {
      case CursorCmdType.SET: {
        const shape = this.readCursor(v.getBigUint64(at + CursorCmd.SHAPE, true));
        this.cursor = { ...shape, x, y, visible: v.getUint8(at + CursorCmd.VISIBLE) !== 0 };
        return;
      }
      case CursorCmdType.MOVE:
        if (this.cursor !== undefined) Object.assign(this.cursor, { x, y, visible: true });
        return;
      case CursorCmdType.HIDE:
        if (this.cursor !== undefined) this.cursor.visible = false;
        return;
      case CursorCmdType.TRAIL:
        return;
      default:
        throw new GuestBug(`cursor command type ${type} is unknown`);
    }
  }

  /** struct qxl_cursor at `address`: an alpha cursor's header and its pixels from the chunk list. */
  private readCursor(address: bigint): Omit<CursorState, 'x' | 'y' | 'visible'> {
    const head = this.slots.span(address, Cursor.SIZE, 'cursor shape');
    const v = head.view;
    const at = head.offset;
    const type = v.getUint16(at + Cursor.TYPE, true);
    const width = v.getUint16(at + Cursor.WIDTH, true);
    const height = v.getUint16(at + Cursor.HEIGHT, true);
    if (type !== CursorType.ALPHA) throw new GuestBug(`cursor type ${type} is not supported (alpha is)`);
    if (width > MAX_CURSOR_DIMENSION || height > MAX_CURSOR_DIMENSION) throw new GuestBug(`cursor of ${width}x${height} is larger than ${MAX_CURSOR_DIMENSION}x${MAX_CURSOR_DIMENSION}`);
    const argb = readChunks(this.slots, address + BigInt(Cursor.CHUNK), width * height * 4, 'cursor shape');
    return { width, height, hotX: v.getUint16(at + Cursor.HOT_X, true), hotY: v.getUint16(at + Cursor.HOT_Y, true), argb };
  }
}
