/**
 * Credit-based flow control of one vsock connection (§5.10.6.3), both ways. Counters are 32-bit
 * and wrap, as the header's fields do; differences are taken modulo 2^32.
 *
 * - Sending: the peer advertised buf_alloc and fwd_cnt in its last header; what we may still send
 *   is buf_alloc - (tx_cnt - fwd_cnt).
 * - Receiving: we advertise `bufAlloc` and how much of what we received has left our buffer
 *   (`fwdCnt`); a peer sending past that has broken the rule.
 */
const U32 = 0x1_0000_0000;

function sub32(a: number, b: number): number {
  return (((a - b) % U32) + U32) % U32;
}

export class Credit {
  /** Bytes we sent the peer. */
  private txCnt = 0;
  private peerBufAlloc = 0;
  private peerFwdCnt = 0;
  /** Bytes the peer sent us. */
  private rxCnt = 0;
  /** Bytes of those that left our buffer (handed on to the host socket). */
  fwdCnt = 0;
  /** fwdCnt as last told to the peer. */
  private reportedFwdCnt = 0;

  constructor(readonly bufAlloc: number) {}

  /** The peer's header told us its buffer and how much it has consumed. */
  peerUpdate(bufAlloc: number, fwdCnt: number): void {
    this.peerBufAlloc = bufAlloc >>> 0;
    this.peerFwdCnt = fwdCnt >>> 0;
  }

  /** The peer's receive buffer as it last told us. */
  get peerBuffer(): number {
    return this.peerBufAlloc;
  }

  /** Bytes we may send now without overrunning the peer's buffer. */
  get peerFree(): number {
    const inFlight = sub32(this.txCnt, this.peerFwdCnt);
    return inFlight >= this.peerBufAlloc ? 0 : this.peerBufAlloc - inFlight;
  }

  sent(n: number): void {
    this.txCnt = (this.txCnt + n) % U32;
  }

  /** The peer sent `n` payload bytes: false when they do not fit the credit we gave (§5.10.6.3.1). */
  received(n: number): boolean {
    if (n > this.bufAlloc - sub32(this.rxCnt, this.fwdCnt)) return false;
    this.rxCnt = (this.rxCnt + n) % U32;
    return true;
  }

  /** `n` received bytes left our buffer. */
  forwarded(n: number): void {
    this.fwdCnt = (this.fwdCnt + n) % U32;
  }

  /** Bytes freed since the peer last heard our fwd_cnt. */
  get unreported(): number {
    return sub32(this.fwdCnt, this.reportedFwdCnt);
  }

  /** Buffer space the peer believes we have: what it may still send before hearing from us. */
  get advertisedFree(): number {
    return this.bufAlloc - sub32(this.rxCnt, this.reportedFwdCnt);
  }

  /**
   * Whether freed space is worth a CREDIT_UPDATE now: a quarter of the buffer freed, or the
   * peer down to less than a quarter of it (it may be waiting for exactly this).
   */
  get updateDue(): boolean {
    const freed = this.unreported;
    return freed > 0 && (freed >= this.bufAlloc / 4 || this.advertisedFree < this.bufAlloc / 4);
  }

  /** Our fwd_cnt goes out in a header now. */
  reported(): number {
    this.reportedFwdCnt = this.fwdCnt;
    return this.fwdCnt;
  }
}
