/**
 * One round of bench/frontend-net-trees.ts, in a process of its own: the net driver of the source
 * tree at PARAVIRT_TREE, driven by that tree's txonly sender, sends 64-byte frames into the
 * net_vhost at PARAVIRT_SOCKET, as bench/frontend-net.ts's paravirt round does, and prints one
 * JSON object: packets per second and this process's CPU time per packet, over ROUND_SECONDS
 * after a warm-up.
 */
import { execFileSync } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import type { NetDriver as NetDriverClass } from '../src/devices/net/driver.ts';
import type { connectNet as connectNetFunction } from '../src/transports/vhost-user/frontend-net.ts';
import type * as TxonlySender from './_net-txonly-sender.ts';

const WARMUP_MS = 500;
const ROUND_MS = 2000;

const tree = process.env.PARAVIRT_TREE ?? '';
const socketPath = process.env.PARAVIRT_SOCKET ?? '';
const packed = process.env.PARAVIRT_BENCH_NET_LAYOUT === 'packed';

// Each tree's own modules: what is compared is the driver code of that tree, and the sender that
// uses it (how a sender writes its frames is part of what the driver's API offers).
const { NetDriver } = (await import(`${tree}/src/devices/net/driver.ts`)) as { NetDriver: typeof NetDriverClass };
const { connectNet } = (await import(`${tree}/src/transports/vhost-user/frontend-net.ts`)) as { connectNet: typeof connectNetFunction };
const { POLL_MICROS, QUEUE_SIZE, startTxonlySender } = (await import(`${tree}/bench/_net-txonly-sender.ts`)) as typeof TxonlySender;

// CPU 0, where bench/frontend-net.ts runs its driver; net_vhost polls CPU 1.
execFileSync('taskset', ['-a', '-p', '-c', '0', String(process.pid)], { stdio: 'ignore' });
const log = pino({ level: 'warn' });
const net = await NetDriver.open(await connectNet(socketPath, { queueSize: QUEUE_SIZE, log }), { packed, queueSize: QUEUE_SIZE, pollMicros: POLL_MICROS, log });
const sender = startTxonlySender(net);
await sleep(WARMUP_MS);
const cpu = process.cpuUsage();
const sent = net.counters.txPackets;
const start = process.hrtime.bigint();
await sleep(ROUND_MS);
const used = process.cpuUsage(cpu);
const packets = net.counters.txPackets - sent;
const seconds = Number(process.hrtime.bigint() - start) / 1e9;
await sender.stop();
await net.close();
process.stdout.write(JSON.stringify({ pps: packets / seconds, cpuMicrosPerPacket: (used.user + used.system) / packets }) + '\n');
process.exit(0);
