// Every setting of the service, defined once: environment variable, CLI flag, default, parser and
// description. The Config type is derived from the table, so a setting cannot exist in one place only.
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** JSON-schema type of a setting's value, for the Helm chart's values.schema.json (scripts/chart-schema.ts). */
export type SettingSchema = { type: 'integer'; minimum: number; maximum?: number } | { type: 'boolean' } | { type: 'string'; enum?: string[] };

type Parser<T> = ((raw: string, name: string) => T) & { schema?: SettingSchema };

interface Setting<T> {
  env: string;
  default: T;
  parse: Parser<T>;
  doc: string;
  schema: SettingSchema;
}

const int = (min: number, max = Number.MAX_SAFE_INTEGER): Parser<number> =>
  Object.assign(
    (raw: string, name: string) => {
      const v = Number(raw);
      if (!/^-?\d+$/.test(raw.trim()) || v < min || v > max) throw new ConfigError(`${name}: expected an integer in [${min}, ${max}], got ${JSON.stringify(raw)}`);
      return v;
    },
    { schema: { type: 'integer' as const, minimum: min, ...(max < Number.MAX_SAFE_INTEGER ? { maximum: max } : {}) } },
  );
const str: Parser<string> = (raw) => raw;
const bool: Parser<boolean> = Object.assign(
  (raw: string, name: string) => {
    if (/^(1|true|yes|on)$/i.test(raw)) return true;
    if (/^(0|false|no|off)$/i.test(raw)) return false;
    throw new ConfigError(`${name}: expected 1/0, true/false, yes/no or on/off, got ${JSON.stringify(raw)}`);
  },
  { schema: { type: 'boolean' as const } },
);
const list: Parser<string[]> = (raw) => raw.split(',').map((s) => s.trim()).filter(Boolean);
const oneOf = <T extends string>(...allowed: T[]): Parser<T> =>
  Object.assign(
    (raw: string, name: string) => {
      if (!(allowed as string[]).includes(raw)) throw new ConfigError(`${name}: expected one of ${allowed.join(', ')}, got ${JSON.stringify(raw)}`);
      return raw as T;
    },
    { schema: { type: 'string' as const, enum: [...allowed] } },
  );

/** RMT_DEVICES: '' | 'all' | distinct integer ids in [0, 64], comma-separated (kept as given; deviceIds() reads it). */
const devices: Parser<string> = (raw, name) => {
  const v = raw.trim();
  if (v === '' || v === 'all') return v;
  const ids = v.split(',').map((s) => s.trim());
  for (const id of ids) {
    if (!/^\d+$/.test(id) || Number(id) > 64) throw new ConfigError(`${name}: expected all or device ids such as 0,1 (integers in [0, 64]), got ${JSON.stringify(raw)}`);
  }
  const dup = ids.find((id, i) => ids.findIndex((o) => Number(o) === Number(id)) !== i);
  if (dup !== undefined) throw new ConfigError(`${name}: device ${dup} is listed twice in ${JSON.stringify(raw)}`);
  return ids.map(Number).join(',');
};

function setting<T>(env: string, def: T, parse: Parser<T>, doc: string): Setting<T> {
  return { env, default: def, parse, doc, schema: parse.schema ?? { type: 'string' } };
}

export const SETTINGS = {
  port: setting('PORT', 8080, int(0, 65535), 'HTTP port (api, serve)'),
  host: setting('HOST', '0.0.0.0', str, 'HTTP listen address'),
  logLevel: setting('LOG_LEVEL', 'info', oneOf('fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'), 'pino log level'),
  apiKeys: setting('RMT_API_KEYS', [] as string[], list, 'accepted bearer API keys (comma-separated); none = no authentication'),
  apiKeyHashes: setting('RMT_API_KEY_HASHES', [] as string[], list, 'sha256 hex hashes of accepted API keys (instead of plain keys)'),
  bodyLimitBytes: setting('RMT_BODY_LIMIT', 8 * 1024 * 1024, int(1024), 'largest HTTP request body (bytes)'),
  requestTimeoutMs: setting('RMT_REQUEST_TIMEOUT_MS', 30000, int(0), 'a request (headers and body) not fully received in this many ms is answered 408 and its connection closed; it bounds receiving only, so SSE streams and websockets are not cut; 0 = no limit'),
  headersTimeoutMs: setting('RMT_HEADERS_TIMEOUT_MS', 10000, int(0), 'request headers not fully received in this many ms: 408; lowered to RMT_REQUEST_TIMEOUT_MS when above it (Node requires headers <= request timeout); 0 = only RMT_REQUEST_TIMEOUT_MS'),
  keepAliveTimeoutMs: setting('RMT_KEEP_ALIVE_TIMEOUT_MS', 72000, int(1), 'an idle keep-alive connection is closed after this many ms (above the 60 s idle timeout of common load balancers, so they close first)'),
  dataDir: setting('RMT_DATA_DIR', path.join(ROOT, 'var'), str, 'data folder of the private redis-server `serve` starts when REDIS_URL is not set (append-only; its URL in redis.json, where the other commands find it)'),
  redisUrl: setting('REDIS_URL', '', str, 'Redis URL; empty: `serve` starts a private redis-server (RMT_DATA_DIR), the other commands use the one of a serve running with the same RMT_DATA_DIR'),
  keyPrefix: setting('RMT_PREFIX', 'rmt', str, 'prefix of every Redis key (sessions, queue, workers)'),
  redisClusterNodes: setting('REDIS_CLUSTER_NODES', [] as string[], list, 'Redis Cluster seed nodes (host:port, comma-separated): sessions, progress and the queue run on the cluster (REDIS_URL is then not used); empty = one Redis'),
  queueShards: setting('RMT_QUEUE_SHARDS', 0, int(0, 1024), 'work queues, each with its own hash tag so a cluster spreads them over its masters; a session always uses the same one and every worker consumes all; every process must use the same value; 0 = 1 on one Redis, 3 on a cluster (set it to the number of masters)'),
  redisWaitReplicas: setting('RMT_REDIS_WAIT_REPLICAS', -1, int(-1, 64), 'acknowledge an accepted request (and a created, forked or imported session) only once WAIT confirms it on this many replicas, so a failover cannot lose it (else the request fails with 503 not_durable); -1 = 1 on a cluster, 0 (no WAIT) on one Redis'),
  redisWaitTimeoutMs: setting('RMT_REDIS_WAIT_TIMEOUT_MS', 2000, int(1, 600000), 'how long WAIT waits for the replicas of RMT_REDIS_WAIT_REPLICAS'),
  modelsDir: setting('RMT_MODELS_DIR', path.join(ROOT, 'models'), str, 'folder holding model packages'),
  models: setting('RMT_MODELS', ['rmt-brown-lm', 'rmt-brown-small'], list, 'packages to load (comma-separated); the first is the default model'),
  executionProvider: setting('RMT_EXECUTION_PROVIDER', 'cpu' as 'cpu' | 'cuda', oneOf('cpu', 'cuda'), 'onnxruntime execution provider'),
  deviceId: setting('RMT_DEVICE_ID', 0, int(0, 64), 'CUDA device id'),
  precision: setting('RMT_PRECISION', 'fp32' as 'fp32' | 'fp16', oneOf('fp32', 'fp16'), 'graph precision (fp16 needs a package that ships it; meant for cuda)'),
  cpuFallback: setting('RMT_CPU_FALLBACK', false, bool, 'cuda: if CUDA cannot start, run the fp32 graphs on the CPU (logged) instead of exiting'),
  ortProfileDir: setting('RMT_ORT_PROFILE_DIR', '', str, 'write onnxruntime profiles (JSON per graph, on shutdown) into this folder; empty = off'),
  ortRunner: setting('RMT_ORT_RUNNER', 'onnxruntime-node' as 'onnxruntime-node' | 'bound', oneOf('onnxruntime-node', 'bound'), 'what runs the segment_state graphs (ingest): onnxruntime-node, or bound: the IO-binding addon (npm run native:build), whose sessions keep their buffers; experimental: on an H100 it measured 0.64-0.96x onnxruntime-node (BENCHMARKS.md)'),
  intraOpThreads: setting('RMT_INTRA_OP_THREADS', 0, int(0, 256), 'onnxruntime intra-op threads; 0 = onnxruntime\'s default on cpu (one per core), 1 on cuda'),
  maxBatch: setting('RMT_MAX_BATCH', 32, int(1, 4096), 'most rows in one onnxruntime run'),
  maxBatchTokens: setting('RMT_MAX_BATCH_TOKENS', 8192, int(1, 1 << 24), 'most tokens in one segment/prefill run'),
  maxLogitsRows: setting('RMT_MAX_LOGITS_ROWS', 8, int(1, 4096), 'most rows in one run of a graph that projects every position onto the vocabulary (scored appends, prefill); bigger batches run in chunks, results unchanged: onnxruntime\'s arena keeps what the largest run needed (bench/engine-memory.ts)'),
  batchWaitMs: setting('RMT_BATCH_WAIT_MS', 0, int(0, 1000), 'most ms a batch waits for sessions the engine answered moments ago (their next segment) before it runs; with several engine threads only while another of them has runs to do (and is not waiting itself); 0 = run what is queued'),
  enginePackSessions: setting('RMT_ENGINE_PACK_SESSIONS', 16, int(0, 4096), 'worker, engine threads > 1: a new session goes to the fullest thread holding fewer than this many, so a few sessions share one thread\'s runs instead of splitting into small ones; 0 (or every thread that full) = the thread with the fewest'),
  segmentSteps: setting('RMT_SEGMENT_STEPS', true, bool, 'worker: run a session\'s segments K per onnxruntime run through the package\'s segment_state_steps graph when it ships one and every row of the batch has K to go (the engine thread turns around once per K segments); 0 = one segment per run'),
  engineThreads: setting('RMT_ENGINE_THREADS', 0, int(0, 16), 'worker: engine threads per process, each with its own copy of the models and its own cohort of sessions, so one\'s run overlaps the others\' turnaround (RMT_ENGINE_TURNS); 0 = 2 on cuda, 1 on cpu'),
  engineTurns: setting('RMT_ENGINE_TURNS', false, bool, 'worker, engine threads > 1: 1 = one onnxruntime run on the device at a time (a ticket lock); 0 = the threads\' runs overlap, each onnxruntime session on its own CUDA stream (faster at 64 and 256 sessions on the H200, bench/gpu-suite.sh, bench/results/gpu-12)'),
  devices: setting('RMT_DEVICES', '', devices, 'worker: `all` (every GPU nvidia-smi or /proc/driver/nvidia lists) or device ids (0,1,...): one worker process per device, each with RMT_DEVICE_ID set (times RMT_WORKER_PROCESSES); a process that dies is restarted (with a backoff; more than 5 restarts of one device in a minute stops the worker); empty = one device, RMT_DEVICE_ID'),
  workerProcesses: setting('RMT_WORKER_PROCESSES', 1, int(1, 64), 'worker: processes sharing this device (each its own engine and queue consumer; their main threads tokenize and commit in parallel)'),
  workerConcurrency: setting('RMT_WORKER_CONCURRENCY', 64, int(1, 10000), 'requests one worker process advances at once (their segments are batched)'),
  sessionTtlSeconds: setting('RMT_SESSION_TTL_S', 86400, int(1), 'a session idle this long is deleted'),
  lockDurationMs: setting('RMT_LOCK_MS', 30000, int(1000), 'a worker\'s lease on a session (and its BullMQ job lock): a crashed worker\'s sessions are taken over by others once it lapses'),
  stalledIntervalMs: setting('RMT_STALLED_CHECK_MS', 30000, int(500), 'how often workers look for stalled jobs (and for sessions with work but no worker)'),
  requestAttempts: setting('RMT_REQUEST_ATTEMPTS', 20, int(1, 100), 'starts of one request without progress (its worker crashed or failed) before its session enters the failed state; high enough that a run of kills of the worker holding the session (bench/chaos: loops of up to 16) does not fail it'),
  maxQueueDepth: setting('RMT_MAX_QUEUE_DEPTH', 64, int(1), 'api: sessions waiting for a worker (cluster-wide, read from Redis) at which new appends and completions are refused (429, websocket "overloaded") and /readyz reports saturation; the default is one worker\'s RMT_WORKER_CONCURRENCY: past it a new session waits more than a whole round of the sessions being served (BENCHMARKS.md, overload)'),
  shutdownGraceMs: setting('RMT_SHUTDOWN_GRACE_MS', 25000, int(0), 'on SIGTERM, time to finish in-flight requests before handing them back'),
  metricsPort: setting('RMT_WORKER_METRICS_PORT', -1, int(-1, 65535), 'worker: serve Prometheus /metrics on this port (0 = any free port, -1 = off)'),
  maxPendingTextChars: setting('RMT_MAX_PENDING_TEXT', 4096, int(16), 'longest run of text without whitespace held back for exact tokenization'),
  tokenizerThreads: setting('RMT_TOKENIZER_THREADS', 2, int(0, 256), 'api: threads tokenizing long appends before they are queued (workers then tokenize only their ends); 0 = workers tokenize appends on their main thread'),
  tokenizerNice: setting('RMT_TOKENIZER_NICE', 0, int(0, 19), 'api, Linux: the tokenizer threads lower their CPU priority by this much (nice), so on a host shared with workers they yield to the engine threads'),
  commitSegments: setting('RMT_COMMIT_SEGMENTS', 8, int(1, 4096), 'worker: an ingest commits its session (state to Redis, a progress event) every this many segments; a crash redoes at most this many'),
  commitMs: setting('RMT_COMMIT_MS', 250, int(0), 'worker: ... or when this many ms passed since its last commit, whichever comes first'),
} satisfies Record<string, Setting<unknown>>;

type Settings = typeof SETTINGS;
export type Config = { [K in keyof Settings]: Settings[K]['default'] };

export class ConfigError extends Error {}

export function flagName(key: string): string {
  return '--' + key.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
}

/** Reads settings from flags (--redis-url x or --redis-url=x), then the environment, then defaults. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, argv: readonly string[] = []): Config {
  const flags = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (!a.startsWith('--')) continue;
    const eq = a.indexOf('=');
    if (eq > 0) flags.set(a.slice(0, eq), a.slice(eq + 1));
    else if (i + 1 < argv.length) flags.set(a, argv[++i]!);
  }
  const out: Record<string, unknown> = {};
  for (const [key, s] of Object.entries(SETTINGS) as [string, Setting<unknown>][]) {
    const flag = flagName(key);
    const raw = flags.get(flag) ?? env[s.env];
    out[key] = raw === undefined || raw === '' ? s.default : s.parse(raw, flags.has(flag) ? flag : s.env);
  }
  return out as Config;
}

/** Markdown table of every setting, for the README. */
export function configTable(): string {
  const rows = Object.entries(SETTINGS).map(
    ([key, s]) => `| \`${s.env}\` | \`${flagName(key)}\` | \`${JSON.stringify(s.default).replace(ROOT, '.')}\` | ${s.doc} |`,
  );
  return ['| variable | flag | default | meaning |', '|---|---|---|---|', ...rows].join('\n');
}
