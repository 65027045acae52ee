// Entry point of an I/O thread when paravirt runs from source (io-thread.ts under tsx; the
// compiled command starts io-thread-worker.js directly). A worker does not inherit a TypeScript
// loader the main thread registered at run time, so it registers its own, then loads the module
// named in workerData.
import { register } from 'tsx/esm/api';
import { workerData } from 'node:worker_threads';

register();
await import(workerData.entry);
