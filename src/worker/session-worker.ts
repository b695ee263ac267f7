// A worker process's consumer of the work queue: each job names a session with work, and one turn
// (session-runner.ts) applies that session's log under its lease. Many sessions' turns run at once
// (RMT_WORKER_CONCURRENCY) and their segments meet in the engine's batches. Also here: the heartbeat
// that /readyz reads, the sweeper (sweeper.ts), and the control channel that carries cancellations.
// With a sharded queue (keys.ts) there is one BullMQ worker per shard, sharing the concurrency.
import { DelayedError, Worker, type Job } from 'bullmq';
import type { Engine } from '../engine/engine.ts';
import type { TextTokenizer } from '../text/tokenizer.ts';
import { redisKeys, type KeyLayout, type RedisKeys } from '../state/keys.ts';
import { duplicateClient, type RedisClient } from '../state/redis-connection.ts';
import type { SessionStore } from '../state/session-store.ts';
import { RequestError } from '../queue/request.ts';
import { SessionLog } from '../queue/session-log.ts';
import { WORK_QUEUE, WorkQueue, workRetryDelay, type WorkJobData } from '../queue/work-queue.ts';
import type { WorkerMetrics } from '../telemetry/metrics.ts';
import type { ApplyContext } from './apply-context.ts';
import { SessionRunner } from './session-runner.ts';
import { Sweeper } from './sweeper.ts';
import { ShardWatchdog } from './shard-watchdog.ts';

export interface SessionWorkerOptions {
  redis: RedisClient;
  store: SessionStore;
  engine: Engine;
  tokenizers: Map<string, TextTokenizer>;
  prefix: string;
  /** One Redis (the default) or a cluster's layout with its queue shards (keys.ts). */
  layout?: KeyLayout;
  ttlSeconds: number;
  /** Sessions advanced at once, over every queue shard. */
  concurrency: number;
  /** A session's lease and a job's lock: a crashed worker's sessions are taken over once they lapse. */
  lockDurationMs: number;
  stalledIntervalMs: number;
  /** Starts of one request without progress before its session fails (acquire.lua). */
  maxAttempts: number;
  maxPendingTextChars: number;
  /** Ingest commits at most every this many segments or milliseconds (apply-request.ts). */
  commitEvery?: { segments: number; ms: number };
  log?: (obj: Record<string, unknown>, msg: string) => void;
  metrics?: WorkerMetrics;
}

/**
 * A job whose worker died goes back to the wait list however often that happens: the session's own
 * attempt count (acquire.lua) decides when a request is hopeless, and only for the request that was
 * running, never for a session that merely had a job.
 */
const MAX_STALLED = 1_000_000;

export class SessionWorker {
  /** One BullMQ worker per queue shard (index = shard). */
  readonly workers: Worker<WorkJobData>[];
  readonly runner: SessionRunner;
  readonly log: SessionLog;
  readonly sweeper: Sweeper;
  /** On a cluster: replaces a shard's consumer left parked by a failover (shard-watchdog.ts). */
  readonly watchdog?: ShardWatchdog;
  readonly id = `${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  private readonly keys: RedisKeys;
  private readonly work: WorkQueue;
  private readonly conns: RedisClient[];
  private readonly control: RedisClient;
  private heartbeat?: NodeJS.Timeout;
  private readonly perShard: number;
  /** Jobs of each shard this process is running. */
  private readonly inFlight: number[];

  constructor(private readonly o: SessionWorkerOptions) {
    this.keys = redisKeys(o.prefix, o.layout);
    this.log = new SessionLog(o.redis, { prefix: o.prefix, ttlSeconds: o.ttlSeconds, ...(o.layout ? { layout: o.layout } : {}) });
    this.work = new WorkQueue(o.redis, this.keys);
    const active = (sessionId: string) => this.keys.active(this.keys.queueShardOf(sessionId));
    const wake = async (sessionId: string) => {
      await o.redis.zadd(active(sessionId), Date.now(), sessionId);
      await this.work.wake(sessionId);
    };
    const ctx: ApplyContext = {
      engine: o.engine,
      store: o.store,
      tokenizer: (m) => {
        const t = o.tokenizers.get(m);
        if (!t) throw new RequestError('model_not_loaded', `model ${m} is not loaded by this worker`);
        return t;
      },
      maxPendingTextChars: o.maxPendingTextChars,
      ...(o.commitEvery ? { commitEvery: o.commitEvery } : {}),
    };
    this.runner = new SessionRunner({
      log: this.log, store: o.store, ctx, workerId: this.id, leaseMs: o.lockDurationMs, maxAttempts: o.maxAttempts,
      publish: (sessionId, ev) => void o.store.publishProgress(sessionId, ev).catch(() => undefined),
      released: (sessionId) => void o.redis.zrem(active(sessionId), sessionId).catch(() => undefined),
      wake,
      ...(o.metrics ? { metrics: o.metrics } : {}),
      ...(o.log ? { logger: o.log } : {}),
    });
    this.sweeper = new Sweeper({ redis: o.redis, keys: this.keys, staleMs: 2 * o.lockDurationMs + o.stalledIntervalMs, wake, ...(o.log ? { log: o.log } : {}) });
    const shards = this.keys.layout.queueShards;
    // The process's concurrency split over the shards (at least one each): sessions spread evenly
    // over the shards by their slots, so each shard's consumer gets its share of them.
    this.perShard = Math.max(1, Math.ceil(o.concurrency / shards));
    this.inFlight = new Array<number>(shards).fill(0);
    this.conns = Array.from({ length: shards }, () => duplicateClient(o.redis));
    this.workers = this.conns.map((connection, shard) => this.consumer(shard, connection));
    if (this.keys.layout.cluster) {
      this.watchdog = new ShardWatchdog({
        shards, head: (shard) => this.work.oldest(shard), idle: (shard) => this.inFlight[shard] === 0, restart: (shard) => this.replace(shard),
        overdueMs: 2 * o.lockDurationMs + o.stalledIntervalMs, ...(o.log ? { log: o.log } : {}),
      });
    }
    this.control = duplicateClient(o.redis);
    this.control.on('message', (_channel: string, msg: string) => {
      const m = JSON.parse(msg) as { type?: string; sessionId?: string; seq?: number };
      if (m.type === 'cancel' && typeof m.sessionId === 'string' && typeof m.seq === 'number') this.runner.cancel(m.sessionId, m.seq);
    });
  }

  private consumer(shard: number, connection: RedisClient): Worker<WorkJobData> {
    const o = this.o;
    const w = new Worker<WorkJobData>(WORK_QUEUE, (job, token) => this.process(shard, job, token), {
      connection,
      prefix: this.keys.queuePrefix(shard),
      concurrency: this.perShard,
      lockDuration: o.lockDurationMs,
      stalledInterval: o.stalledIntervalMs,
      maxStalledCount: MAX_STALLED,
      settings: { backoffStrategy: workRetryDelay },
      autorun: false,
    });
    w.on('error', (err) => o.log?.({ err: String(err), shard }, 'worker error'));
    w.on('failed', (job, err) => o.log?.({ sessionId: job?.data.sessionId, err: String(err) }, 'session turn failed; retrying'));
    return w;
  }

  /** A new consumer for the shard; the old one is closed without waiting (it may never answer). */
  private async replace(shard: number): Promise<void> {
    const [old, oldConn] = [this.workers[shard]!, this.conns[shard]!];
    this.conns[shard] = duplicateClient(this.o.redis);
    this.workers[shard] = this.consumer(shard, this.conns[shard]);
    void old.close(true).catch(() => undefined).finally(() => oldConn.disconnect());
    await this.workers[shard].waitUntilReady();
    void this.workers[shard].run();
  }

  /** The single-Redis layout's one BullMQ worker (shard 0). */
  get worker(): Worker<WorkJobData> {
    return this.workers[0]!;
  }

  async start(): Promise<void> {
    await this.control.subscribe(this.keys.controlChannel());
    for (const w of this.workers) {
      await w.waitUntilReady();
      void w.run();
    }
    const beat = () => void this.o.redis.zadd(this.keys.workers(), Date.now(), this.id).catch(() => undefined);
    beat();
    this.heartbeat = setInterval(beat, 2000);
    this.heartbeat.unref();
    this.sweeper.start(Math.max(1000, this.o.stalledIntervalMs));
    this.watchdog?.start(Math.max(1000, this.o.stalledIntervalMs));
  }

  private async process(shard: number, job: Job<WorkJobData>, token?: string): Promise<void> {
    this.inFlight[shard]!++;
    let out;
    try {
      out = await this.runner.run(job.data.sessionId);
    } finally {
      this.inFlight[shard]!--;
    }
    if (out.kind === 'later') {
      // Another worker's lease is still live (it stalled, or died and its lease has not lapsed yet).
      await job.moveToDelayed(Date.now() + out.delayMs, token);
      throw new DelayedError();
    }
  }

  /**
   * Finishes the requests in flight within graceMs, handing each session's remaining work to another
   * worker; past the grace it closes anyway (the leases lapse and other workers resume at the last commit).
   */
  async close(graceMs: number): Promise<void> {
    if (this.heartbeat) clearInterval(this.heartbeat);
    await this.o.redis.zrem(this.keys.workers(), this.id).catch(() => undefined);
    await this.sweeper.stop();
    await this.watchdog?.stop();
    this.runner.stopping = true;
    // BullMQ's close() keeps its first call's promise, so a graceful close() followed by close(true)
    // still waits for every active job. Wait here instead (pause: no new job is taken), then close
    // once, forced if the grace ran out.
    let timer: NodeJS.Timeout | undefined;
    const finished =
      graceMs > 0 &&
      (await Promise.race([
        Promise.all(this.workers.map((w) => w.pause())).then(() => true, () => false),
        new Promise<boolean>((r) => (timer = setTimeout(() => r(false), graceMs))),
      ]));
    clearTimeout(timer);
    if (!finished) this.runner.abandon();
    await Promise.all(this.workers.map((w) => w.close(!finished)));
    await this.work.close();
    this.control.disconnect();
    for (const c of this.conns) c.disconnect();
  }
}
