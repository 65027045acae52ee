/**
 * Wake JavaScript when a descriptor (eventfd, socket, pipe) becomes readable or writable, with
 * no thread spinning or parked on it.
 *
 * Choice: libuv's poll handle (uv_poll_t) on Node's own event loop, created through
 * koffi.node.poll. The descriptor joins the loop's epoll set, so readiness is delivered by the
 * same epoll_wait that serves timers and sockets: nothing runs while idle, and no libuv
 * thread-pool worker is held. Node's own stream handles (net.Socket over an fd) are no general
 * answer: libuv cannot wrap an eventfd in one. epoll_wait called through koffi's async calls
 * would park one of the four pool workers per waiter (starving node:fs/promises, which shares
 * the pool) and pay a cross-thread hand-off on every wake-up.
 * Measured with `npm run bench -- readiness` (write -> JavaScript callback, 2000 sequential
 * rounds, 2-core VM, two runs): eventfd via uv_poll median 4.5-7 us, p99 17-34 us; Unix socket
 * via uv_poll median 15 us, p99 58-78 us, net.Socket on the same socket median 14 us, p99
 * 112-138 us; a bare thread-pool round trip, the floor of the epoll-on-the-pool design,
 * already costs 17 us median.
 *
 * Rules the loop imposes: one watcher per descriptor (two uv_poll_t on one fd corrupt libuv's
 * bookkeeping, so a second watch() throws), and a watcher must be closed before its descriptor.
 * A descriptor epoll cannot watch (a regular file or directory, a closed number) must never
 * reach koffi.node.poll, whose failure path aborts the whole process; watch() first tries the
 * descriptor on a private epoll instance, as libuv itself would, and throws a SyscallError.
 * Readiness is level-triggered: a callback that does not drain the descriptor runs again.
 */
import koffi, { type node } from 'koffi';
import { declare } from './libc.ts';
import { SyscallError, check, lastErrno } from './syscall-error.ts';

// Registers the struct named in epoll_ctl's prototype; x86-64 packs it (12 bytes).
koffi.pack('paravirt_epoll_event', { events: 'uint32_t', data: 'uint64_t' });
const epollCreate1 = declare<(flags: number) => number>('int epoll_create1(int flags)');
const epollCtl = declare<(epfd: number, op: number, fd: number, event: { events: number; data: bigint } | null) => number>(
  'int epoll_ctl(int epfd, int op, int fd, paravirt_epoll_event *event)',
);
const EPOLL_CLOEXEC = 0o2000000;
const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLLIN = 0x1;

/** A private epoll instance used only to test descriptors; created on first use. */
let probe = -1;

/** Throw a SyscallError unless epoll (hence libuv) can watch `fd`. */
function checkPollable(fd: number): void {
  if (probe < 0) probe = check('epoll_create1', epollCreate1(EPOLL_CLOEXEC), 'creating the descriptor probe');
  if (epollCtl(probe, EPOLL_CTL_ADD, fd, { events: EPOLLIN, data: 0n }) < 0) {
    throw new SyscallError('epoll_ctl', lastErrno(), `checking that fd ${fd} can be watched`);
  }
  if (epollCtl(probe, EPOLL_CTL_DEL, fd, null) < 0) {
    throw new SyscallError('epoll_ctl', lastErrno(), `releasing fd ${fd} from the descriptor probe`);
  }
}

export interface ReadinessHandlers {
  /** Runs while the descriptor is readable (data, EOF, or a pending connection). */
  readonly readable?: () => void;
  /** Runs while the descriptor is writable. */
  readonly writable?: () => void;
  /** Runs when the loop reports a polling failure (e.g. the fd was closed); the watch stops. */
  readonly error?: (err: SyscallError) => void;
}

interface PollEvents {
  readable: boolean;
  writable: boolean;
}

const watched = new Set<number>();

export class Watcher {
  private handle: node.PollHandle | null = null;
  private handlers: ReadinessHandlers;

  /** Use watch(). */
  constructor(
    readonly fd: number,
    handlers: ReadinessHandlers,
  ) {
    if (!Number.isInteger(fd) || fd < 0) throw new RangeError(`cannot watch fd ${fd}: not a descriptor number`);
    if (watched.has(fd)) throw new Error(`fd ${fd} already has a readiness watcher`);
    checkPollable(fd);
    this.handlers = handlers;
    // koffi calls back with (status, events): status is 0 or a negative errno from libuv.
    const onPoll = (status: number, events: PollEvents): void => this.dispatch(status, events);
    this.handle = koffi.node.poll(fd, this.interest(), onPoll as unknown as (ev: node.PollEvents) => void);
    watched.add(fd);
  }

  /** Replace the handlers; the events polled for follow which handlers are present. */
  update(handlers: ReadinessHandlers): void {
    if (this.handle === null) throw new Error(`readiness watcher for fd ${this.fd} is closed`);
    this.handlers = handlers;
    const onPoll = (status: number, events: PollEvents): void => this.dispatch(status, events);
    this.handle.start(this.interest(), onPoll as unknown as (ev: node.PollEvents) => void);
  }

  /** Let the process exit while this watcher is the only thing left in the loop. */
  unref(): void {
    this.handle?.unref();
  }

  get closed(): boolean {
    return this.handle === null;
  }

  /** Stop watching; required before the descriptor itself is closed. */
  close(): void {
    if (this.handle === null) return;
    this.handle.close();
    this.handle = null;
    watched.delete(this.fd);
  }

  private interest(): { readable: boolean; writable: boolean } {
    return { readable: this.handlers.readable !== undefined, writable: this.handlers.writable !== undefined };
  }

  private dispatch(status: number, events: PollEvents): void {
    if (this.handle === null) return;
    if (status < 0) {
      const { error } = this.handlers;
      this.close();
      error?.(new SyscallError('epoll', -status, `watching fd ${this.fd}`));
      return;
    }
    if (events.readable) this.handlers.readable?.();
    // The readable handler may have closed the watcher (e.g. on EOF).
    if (events.writable && this.handle !== null) this.handlers.writable?.();
  }
}

/** Watch `fd` for the events whose handlers are given. */
export function watch(fd: number, handlers: ReadinessHandlers): Watcher {
  return new Watcher(fd, handlers);
}

/**
 * Resolves the next time `fd` is readable (at once if it already is). The descriptor must not
 * have another watcher meanwhile.
 */
export function whenReadable(fd: number): Promise<void> {
  return once(fd, 'readable');
}

/** Resolves the next time `fd` is writable. */
export function whenWritable(fd: number): Promise<void> {
  return once(fd, 'writable');
}

function once(fd: number, event: 'readable' | 'writable'): Promise<void> {
  return new Promise((resolve, reject) => {
    const w = watch(fd, {
      [event]: () => {
        w.close();
        resolve();
      },
      error: reject,
    });
  });
}
