/**
 * Unix stream sockets with descriptor passing (SCM_RIGHTS), which Node's net module cannot do
 * and vhost-user needs: memory regions, kick/call eventfds and the back-end channel all travel
 * as ancillary data. Sockets are non-blocking; readiness.ts says when to call receive() again.
 *
 * Unix SOCK_SEQPACKET sockets (SeqpacketSocket), which Node's net module cannot make either:
 * connection-oriented like a stream, but each send is one message the reader receives whole,
 * which is what a vsock SEQPACKET connection's host end needs (its messages keep their
 * boundaries, VIRTIO 1.2 §5.10.6.6).
 *
 * sendmsg/recvmsg take a struct msghdr pointing at an iovec and a control buffer. They are
 * built in one native scratch area whose layout koffi computes from the struct definitions
 * below (nothing hard-codes an offset); data is copied through it, which costs nothing next to
 * a system call for control-plane messages of a few hundred bytes. Calls are synchronous, so
 * one scratch area serves every socket.
 */
import koffi from 'koffi';
import { declare, type Pointer } from './libc.ts';
import { O_CLOEXEC, O_NONBLOCK, closeAll, closeFd, setNonBlocking } from './fd.ts';
import { Errno, SyscallError, check, lastErrno } from './syscall-error.ts';
import { whenReadable } from './readiness.ts';

const iovec = koffi.struct('paravirt_iovec', { iov_base: 'void *', iov_len: 'size_t' });
const msghdr = koffi.struct('paravirt_msghdr', {
  msg_name: 'void *',
  msg_namelen: 'uint32_t',
  msg_iov: 'void *',
  msg_iovlen: 'size_t',
  msg_control: 'void *',
  msg_controllen: 'size_t',
  msg_flags: 'int',
});
const cmsghdr = koffi.struct('paravirt_cmsghdr', { cmsg_len: 'size_t', cmsg_level: 'int', cmsg_type: 'int' });
const SUN_PATH_MAX = 108;
const sockaddrUn = koffi.struct('paravirt_sockaddr_un', { sun_family: 'uint16_t', sun_path: koffi.array('uint8_t', SUN_PATH_MAX) });

interface SockaddrUn {
  sun_family: number;
  sun_path: Uint8Array;
}
interface Msghdr {
  msg_name: Pointer | null;
  msg_namelen: number;
  msg_iov: Pointer;
  msg_iovlen: number;
  msg_control: Pointer;
  msg_controllen: number;
  msg_flags: number;
}

const socketFn = declare<(domain: number, type: number, protocol: number) => number>('int socket(int domain, int type, int protocol)');
const socketpair = declare<(domain: number, type: number, protocol: number, sv: Int32Array) => number>(
  'int socketpair(int domain, int type, int protocol, _Out_ int *sv)',
);
const bind = declare<(fd: number, addr: SockaddrUn, len: number) => number>(
  'int bind(int fd, const paravirt_sockaddr_un *addr, uint32_t len)',
);
const connect = declare<(fd: number, addr: SockaddrUn, len: number) => number>(
  'int connect(int fd, const paravirt_sockaddr_un *addr, uint32_t len)',
);
const listenFn = declare<(fd: number, backlog: number) => number>('int listen(int fd, int backlog)');
const accept4 = declare<(fd: number, addr: null, len: null, flags: number) => number>(
  'int accept4(int fd, void *addr, void *len, int flags)',
);
const sendmsg = declare<(fd: number, msg: Pointer, flags: number) => number>('intptr_t sendmsg(int fd, void *msg, int flags)');
const recvmsg = declare<(fd: number, msg: Pointer, flags: number) => number>('intptr_t recvmsg(int fd, void *msg, int flags)');
const unlink = declare<(path: string) => number>('int unlink(const char *path)');
const shutdownFn = declare<(fd: number, how: number) => number>('int shutdown(int fd, int how)');

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_SEQPACKET = 5;
const SHUT_WR = 1;
const SOCK_NONBLOCK = O_NONBLOCK;
const SOCK_CLOEXEC = O_CLOEXEC;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_CTRUNC = 0x8;
const MSG_TRUNC = 0x20;
const MSG_EOR = 0x80;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;
const FD_BYTES = 4;

/** The kernel's limit of descriptors in one message (SCM_MAX_FD). */
export const MAX_FDS_PER_MESSAGE = 253;
/** Bytes moved by one send() or receive() at most. */
export const MAX_TRANSFER = 64 * 1024;

// CMSG_ALIGN / CMSG_LEN / CMSG_SPACE from <sys/socket.h>, on koffi's sizes.
const cmsgAlign = (n: number): number => {
  const a = koffi.sizeof('size_t');
  return Math.ceil(n / a) * a;
};
const CMSG_HEADER = cmsgAlign(koffi.sizeof(cmsghdr));
const cmsgLen = (n: number): number => CMSG_HEADER + n;
const cmsgSpace = (n: number): number => CMSG_HEADER + cmsgAlign(n);

// The scratch area: [msghdr][iovec][control][data].
const IOV_AT = cmsgAlign(koffi.sizeof(msghdr));
const CONTROL_AT = IOV_AT + cmsgAlign(koffi.sizeof(iovec));
const CONTROL_SIZE = cmsgSpace(MAX_FDS_PER_MESSAGE * FD_BYTES);
const DATA_AT = CONTROL_AT + CONTROL_SIZE;
const SCRATCH_SIZE = DATA_AT + MAX_TRANSFER;
const scratch: Pointer = koffi.address(koffi.alloc('uint8_t', SCRATCH_SIZE));
/**
 * Largest message a SeqpacketSocket sends or receives, the size of its buffer. What the kernel
 * carries is less: a Unix message must fit the sender's socket buffer (net.core.wmem_default,
 * 212992 bytes by default, less 32); a longer send fails with EMSGSIZE.
 */
export const MAX_MESSAGE = 256 * 1024;
/** Messages go through their own area, outside the stream scratch's data part. */
const messageArea: Pointer = koffi.address(koffi.alloc('uint8_t', MAX_MESSAGE));
const messageBytes = new Uint8Array(koffi.view(messageArea, MAX_MESSAGE));
const scratchBytes = new Uint8Array(koffi.view(scratch, SCRATCH_SIZE));
const scratchView = new DataView(scratchBytes.buffer);
const CMSG_LEVEL_AT = koffi.offsetof(cmsghdr, 'cmsg_level');
const CMSG_TYPE_AT = koffi.offsetof(cmsghdr, 'cmsg_type');

/** Point the scratch msghdr at `dataLen` bytes of data (at `data`) and `controlLen` bytes of control. */
function prepare(dataLen: number, controlLen: number, data: Pointer = scratch + BigInt(DATA_AT)): void {
  koffi.encode(scratch, IOV_AT, iovec, { iov_base: data, iov_len: dataLen });
  const hdr: Msghdr = {
    msg_name: null,
    msg_namelen: 0,
    msg_iov: scratch + BigInt(IOV_AT),
    msg_iovlen: 1,
    msg_control: scratch + BigInt(CONTROL_AT),
    msg_controllen: controlLen,
    msg_flags: 0,
  };
  koffi.encode(scratch, 0, msghdr, hdr);
}

/** What one receive() got. */
export interface Received {
  /** The bytes read; empty means the peer closed its end (EOF). */
  readonly bytes: Uint8Array;
  /** Descriptors that arrived with these bytes (close-on-exec), up to the caller's maximum. */
  readonly fds: number[];
  /** Descriptors beyond the caller's maximum, already closed here. */
  readonly discardedFds: number;
  /** The kernel dropped descriptors for lack of control space (MSG_CTRUNC). */
  readonly truncated: boolean;
}

/** A connected, non-blocking Unix stream socket. Owns its descriptor. */
export class UnixSocket {
  #closed = false;

  constructor(readonly fd: number) {}

  /**
   * Send up to MAX_TRANSFER bytes of `data`, with `fds` attached to the first byte. Returns the
   * bytes accepted: fewer than asked when the socket buffer fills (send the rest, without the
   * fds, once writable), 0 when nothing fit (then the fds were not sent either).
   * A vanished peer is a SyscallError (EPIPE/ECONNRESET), never a SIGPIPE.
   */
  send(data: Uint8Array, fds: readonly number[] = []): number {
    if (data.length === 0) throw new RangeError('a stream socket cannot carry descriptors without at least one byte');
    if (fds.length > MAX_FDS_PER_MESSAGE) {
      throw new RangeError(`${fds.length} descriptors exceed the ${MAX_FDS_PER_MESSAGE} one message can carry`);
    }
    const len = Math.min(data.length, MAX_TRANSFER);
    scratchBytes.set(data.subarray(0, len), DATA_AT);
    let controlLen = 0;
    if (fds.length > 0) {
      controlLen = cmsgSpace(fds.length * FD_BYTES);
      scratchBytes.fill(0, CONTROL_AT, CONTROL_AT + controlLen);
      const header = { cmsg_len: cmsgLen(fds.length * FD_BYTES), cmsg_level: SOL_SOCKET, cmsg_type: SCM_RIGHTS };
      koffi.encode(scratch, CONTROL_AT, cmsghdr, header);
      fds.forEach((fd, i) => scratchView.setInt32(CONTROL_AT + CMSG_HEADER + i * FD_BYTES, fd, true));
    }
    prepare(len, controlLen);
    const n = sendmsg(this.fd, scratch, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      const errno = lastErrno();
      if (errno === Errno.EAGAIN || errno === Errno.EINTR) return 0;
      throw new SyscallError('sendmsg', errno, `sending ${len} bytes and ${fds.length} fds on socket ${this.fd}`);
    }
    return n;
  }

  /**
   * Read what is available (up to `maxBytes`) and any descriptors that came with it; null when
   * nothing is available yet. Descriptors beyond `maxFds` are closed and counted.
   */
  receive(maxBytes: number = MAX_TRANSFER, maxFds: number = MAX_FDS_PER_MESSAGE): Received | null {
    if (!Number.isInteger(maxBytes) || maxBytes < 1) throw new RangeError(`receive size ${maxBytes} is not a positive integer`);
    const len = Math.min(maxBytes, MAX_TRANSFER);
    prepare(len, CONTROL_SIZE);
    const n = recvmsg(this.fd, scratch, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0) {
      const errno = lastErrno();
      if (errno === Errno.EAGAIN || errno === Errno.EINTR) return null;
      throw new SyscallError('recvmsg', errno, `receiving on socket ${this.fd}`);
    }
    const hdr = koffi.decode(scratch, 0, msghdr) as Msghdr;
    const all = parseRights(Number(hdr.msg_controllen));
    const fds = all.slice(0, Math.max(0, maxFds));
    const extra = all.slice(fds.length);
    closeAll(extra);
    return {
      bytes: scratchBytes.slice(DATA_AT, DATA_AT + n),
      fds,
      discardedFds: extra.length,
      truncated: (hdr.msg_flags & MSG_CTRUNC) !== 0,
    };
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeFd(this.fd);
  }
}

/** What one SeqpacketSocket.receive() got. */
export interface ReceivedMessage {
  /** The message (its first `maxBytes` when truncated); empty means the peer shut down (EOF). */
  readonly bytes: Uint8Array;
  /** The message's real length: more than `bytes.length` when it was truncated (MSG_TRUNC). */
  readonly length: number;
}

/**
 * A connected, non-blocking Unix SOCK_SEQPACKET socket: whole messages of up to MAX_MESSAGE
 * bytes each way. Owns its descriptor.
 *
 * Zero-length messages cannot be told from the peer's shutdown on Unix sockets (both read as 0
 * bytes), so receive() takes 0 bytes for end of file.
 */
export class SeqpacketSocket {
  #closed = false;

  constructor(readonly fd: number) {}

  /**
   * Send `message` as one message, marked MSG_EOR when `eor` (Linux's Unix sockets accept the
   * flag; every message is a record to them anyway). False when the socket buffer has no room
   * for it now: send it again once writable. A vanished peer is a SyscallError, never a SIGPIPE.
   */
  send(message: Uint8Array, eor = false): boolean {
    if (message.length > MAX_MESSAGE) throw new RangeError(`a ${message.length}-byte message exceeds the ${MAX_MESSAGE} bytes one send carries`);
    messageBytes.set(message);
    prepare(message.length, 0, messageArea);
    const n = sendmsg(this.fd, scratch, MSG_NOSIGNAL | MSG_DONTWAIT | (eor ? MSG_EOR : 0));
    if (n < 0) {
      const errno = lastErrno();
      if (errno === Errno.EAGAIN || errno === Errno.EINTR) return false;
      throw new SyscallError('sendmsg', errno, `sending a ${message.length}-byte message on socket ${this.fd}`);
    }
    return true;
  }

  /**
   * The next message, or null when none is waiting. A message longer than `maxBytes` is
   * consumed whole and returned truncated, with its real length (MSG_TRUNC).
   */
  receive(maxBytes: number = MAX_MESSAGE): ReceivedMessage | null {
    if (!Number.isInteger(maxBytes) || maxBytes < 1) throw new RangeError(`receive size ${maxBytes} is not a positive integer`);
    const len = Math.min(maxBytes, MAX_MESSAGE);
    prepare(len, 0, messageArea);
    // MSG_TRUNC makes recvmsg return the message's real length (Unix sockets, Linux 3.4+).
    const n = recvmsg(this.fd, scratch, MSG_DONTWAIT | MSG_TRUNC);
    if (n < 0) {
      const errno = lastErrno();
      if (errno === Errno.EAGAIN || errno === Errno.EINTR) return null;
      throw new SyscallError('recvmsg', errno, `receiving on socket ${this.fd}`);
    }
    return { bytes: messageBytes.slice(0, Math.min(n, len)), length: n };
  }

  /** No more messages from this side: the peer reads end of file after the ones sent. */
  shutdownWrite(): void {
    check('shutdown', shutdownFn(this.fd, SHUT_WR), `shutting down socket ${this.fd} for writing`);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeFd(this.fd);
  }
}

/** The descriptors in every SCM_RIGHTS message of the received control data. */
function parseRights(controlLen: number): number[] {
  const fds: number[] = [];
  let at = 0;
  while (at + CMSG_HEADER <= controlLen) {
    const base = CONTROL_AT + at;
    const len = Number(koffi.decode(scratch, base, 'size_t'));
    if (len < CMSG_HEADER || at + len > controlLen) break;
    const level = scratchView.getInt32(base + CMSG_LEVEL_AT, true);
    const type = scratchView.getInt32(base + CMSG_TYPE_AT, true);
    if (level === SOL_SOCKET && type === SCM_RIGHTS) {
      const count = Math.floor((len - CMSG_HEADER) / FD_BYTES);
      for (let i = 0; i < count; i++) fds.push(scratchView.getInt32(base + CMSG_HEADER + i * FD_BYTES, true));
    }
    at += cmsgAlign(len);
  }
  return fds;
}

function address(path: string): { addr: SockaddrUn; len: number } {
  const encoded = Buffer.from(path, 'utf8');
  if (encoded.length === 0 || encoded.length >= SUN_PATH_MAX || encoded.includes(0)) {
    throw new RangeError(`socket path "${path}" must be 1 to ${SUN_PATH_MAX - 1} bytes without NUL`);
  }
  const sunPath = new Uint8Array(SUN_PATH_MAX);
  sunPath.set(encoded);
  return { addr: { sun_family: AF_UNIX, sun_path: sunPath }, len: koffi.offsetof(sockaddrUn, 'sun_path') + encoded.length + 1 };
}

/**
 * A listening Unix socket (a stream one, or a SOCK_SEQPACKET one from listenSeqpacket); one it
 * bound to a path removes the path when closed.
 */
export class UnixListener<S extends UnixSocket | SeqpacketSocket = UnixSocket> {
  #closed = false;

  private constructor(
    readonly fd: number,
    /** The path this listener bound, or null for one adopted with fromFd. */
    readonly path: string | null,
    private readonly wrap: (fd: number) => S,
  ) {}

  /**
   * Adopt a socket that is already listening, e.g. one handed over by a service manager
   * (the back-end conventions' --fd). It is made non-blocking; its path, if any, is left alone.
   */
  static fromFd(fd: number): UnixListener {
    setNonBlocking(fd);
    return new UnixListener(fd, null, (conn) => new UnixSocket(conn));
  }

  /** Bind and listen on `path`; a path that already exists is EADDRINUSE (remove stale ones first). */
  static listen(path: string, backlog = 16): UnixListener {
    return new UnixListener(bindListening(path, backlog, SOCK_STREAM), path, (conn) => new UnixSocket(conn));
  }

  /** listen() for SOCK_SEQPACKET connections. */
  static listenSeqpacket(path: string, backlog = 16): UnixListener<SeqpacketSocket> {
    return new UnixListener(bindListening(path, backlog, SOCK_SEQPACKET), path, (conn) => new SeqpacketSocket(conn));
  }

  /** A pending connection, or null when there is none yet. */
  tryAccept(): S | null {
    const fd = accept4(this.fd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      const errno = lastErrno();
      if (errno === Errno.EAGAIN || errno === Errno.EINTR || errno === Errno.ECONNABORTED) return null;
      throw new SyscallError('accept4', errno, `accepting on ${this.path ?? `fd ${this.fd}`}`);
    }
    return this.wrap(fd);
  }

  /** The next connection, waiting for one without blocking the event loop. */
  async accept(): Promise<S> {
    for (;;) {
      const s = this.tryAccept();
      if (s !== null) return s;
      await whenReadable(this.fd);
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeFd(this.fd);
    if (this.path !== null) unlink(this.path);
  }
}

/** A non-blocking socket of `type` bound to `path` and listening. */
function bindListening(path: string, backlog: number, type: number): number {
  const { addr, len } = address(path);
  const fd = check('socket', socketFn(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), 'creating a Unix socket');
  try {
    check('bind', bind(fd, addr, len), `binding to ${path}`);
    check('listen', listenFn(fd, backlog), `listening on ${path}`);
  } catch (e) {
    closeFd(fd);
    throw e;
  }
  return fd;
}

/**
 * Connect to the listener at `path`. connect() on a Unix socket can block while the listener's
 * backlog is full, so it runs on the libuv thread pool, never on the event loop.
 */
export async function connectUnix(path: string): Promise<UnixSocket> {
  return new UnixSocket(await connectFd(path, SOCK_STREAM));
}

/** connectUnix() to a SOCK_SEQPACKET listener. */
export async function connectSeqpacket(path: string): Promise<SeqpacketSocket> {
  return new SeqpacketSocket(await connectFd(path, SOCK_SEQPACKET));
}

function connectFd(path: string, type: number): Promise<number> {
  const { addr, len } = address(path);
  const fd = check('socket', socketFn(AF_UNIX, type | SOCK_CLOEXEC, 0), 'creating a Unix socket');
  return new Promise((resolve, reject) => {
    connect.async(fd, addr, len, (err: unknown, result: number) => {
      // Read errno first: closing the descriptor would overwrite it.
      const failure = err ?? (result < 0 ? new SyscallError('connect', lastErrno(), `connecting to ${path}`) : null);
      try {
        if (failure !== null) throw failure;
        setNonBlocking(fd);
      } catch (e) {
        closeFd(fd);
        reject(e);
        return;
      }
      resolve(fd);
    });
  });
}

/** Two connected SOCK_SEQPACKET sockets. */
export function seqpacketPair(): [SeqpacketSocket, SeqpacketSocket] {
  const sv = new Int32Array(2);
  check('socketpair', socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 'creating a socket pair');
  return [new SeqpacketSocket(sv[0]), new SeqpacketSocket(sv[1])];
}

/** Two connected sockets, as socketpair(2) makes them. */
export function socketPair(): [UnixSocket, UnixSocket] {
  const sv = new Int32Array(2);
  check('socketpair', socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 'creating a socket pair');
  return [new UnixSocket(sv[0]), new UnixSocket(sv[1])];
}
