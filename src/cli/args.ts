// The command line's grammar: each command's own flags, plus the settings of src/config/config.ts that
// apply to it (each also an environment variable). --help is generated from these tables, and a flag
// in neither is refused, so a typo cannot pass silently as a setting left at its default.
import { ConfigError, SETTINGS, flagName, type Config } from '../config/config.ts';
import { DEFAULT_SAMPLING } from '../text/sampling.ts';

export interface FlagSpec {
  name: string;
  /** Placeholder of its value; absent: a switch (no value). */
  value?: string;
  doc: string;
  default?: string;
  multiple?: boolean;
}

type SettingKey = keyof Config;

export interface CommandSpec {
  summary: string;
  synopsis: string;
  flags: FlagSpec[];
  /** The settings that apply (its --help lists these). */
  settings: SettingKey[];
}

// Settings read only by the HTTP side, and only by `serve`; every other setting concerns whoever runs
// an engine or talks to Redis. A new setting is listed for every command until it is put here.
const API_ONLY: SettingKey[] = ['port', 'host', 'apiKeys', 'apiKeyHashes', 'bodyLimitBytes', 'requestTimeoutMs', 'headersTimeoutMs',
  'keepAliveTimeoutMs', 'maxQueueDepth', 'tokenizerThreads', 'tokenizerNice'];
const WORKER_ONLY: SettingKey[] = ['workerProcesses', 'devices', 'metricsPort', 'shutdownGraceMs'];
const ALL = Object.keys(SETTINGS) as SettingKey[];
const without = (...groups: SettingKey[][]) => ALL.filter((k) => !groups.some((g) => g.includes(k)));
const ENGINE: SettingKey[] = without(API_ONLY, WORKER_ONLY);
const CLIENT: SettingKey[] = ['logLevel', 'dataDir', 'redisUrl', 'redisClusterNodes', 'queueShards', 'redisWaitReplicas', 'redisWaitTimeoutMs', 'keyPrefix', 'sessionTtlSeconds'];

const PROGRESS: FlagSpec = { name: 'no-progress', doc: 'plain progress lines instead of a redrawn bar (always so when stderr is not a terminal)' };
const SESSION: FlagSpec[] = [
  { name: 'model', value: 'NAME', doc: 'model of a new session', default: 'the first of RMT_MODELS' },
  { name: 'session', value: 'ID', doc: 'use this session instead of creating one' },
];

export const COMMANDS: Record<string, CommandSpec> = {
  serve: {
    summary: 'API and worker in one process (npm start); without REDIS_URL it starts a private redis-server (data in RMT_DATA_DIR)',
    synopsis: 'rmt-serve serve [options]',
    flags: [],
    settings: ALL.filter((k) => k !== 'workerProcesses' && k !== 'devices'),
  },
  api: {
    summary: 'HTTP/WebSocket API only (deploy several, plus workers, sharing one Redis)',
    synopsis: 'rmt-serve api [options]',
    flags: [],
    settings: [...CLIENT, ...API_ONLY, 'modelsDir', 'models', 'maxPendingTextChars'],
  },
  worker: {
    summary: 'advance sessions: BullMQ worker + onnxruntime engine threads (--devices all|0,1,...: one process per GPU, restarted if it dies)',
    synopsis: 'rmt-serve worker [options]',
    flags: [],
    settings: [...ENGINE, ...WORKER_ONLY],
  },
  ingest: {
    summary: 'stream a text file into a session (created unless --session is given); prints the session as GET /v1/sessions/{id} does',
    synopsis: 'rmt-serve ingest --file PATH [options]',
    flags: [
      { name: 'file', value: 'PATH', doc: 'the text file (required)' },
      ...SESSION,
      { name: 'chunk-chars', value: 'N', doc: 'characters per queued request', default: '65536' },
      { name: 'score', doc: 'also print the perplexity of each segment of the file' },
      PROGRESS,
    ],
    settings: ENGINE,
  },
  generate: {
    summary: 'append the prompt to a session, then generate; the completion streams to stdout, a summary (JSON) to stderr',
    synopsis: 'rmt-serve generate (--prompt TEXT | --file PATH | --session ID) [options]',
    flags: [
      { name: 'prompt', value: 'TEXT', doc: 'the prompt' },
      { name: 'file', value: 'PATH', doc: 'read the prompt from this file' },
      ...SESSION,
      { name: 'max-tokens', value: 'N', doc: 'most tokens to generate', default: '16' },
      { name: 'temperature', value: 'T', doc: '0 = greedy', default: String(DEFAULT_SAMPLING.temperature) },
      { name: 'top-k', value: 'K', doc: '0 = off', default: String(DEFAULT_SAMPLING.topK) },
      { name: 'top-p', value: 'P', doc: 'nucleus sampling', default: String(DEFAULT_SAMPLING.topP) },
      { name: 'seed', value: 'S', doc: 'same seed, same text', default: 'random (0 when --temperature 0)' },
      { name: 'stop', value: 'TEXT', doc: 'stop before this text (repeatable)', multiple: true },
      PROGRESS,
    ],
    settings: ENGINE,
  },
  config: {
    summary: 'print the settings table (environment variables, flags, defaults) as markdown',
    synopsis: 'rmt-serve config',
    flags: [],
    settings: [],
  },
};

const HELP: FlagSpec = { name: 'help', doc: 'print this help and exit' };

export function mainHelp(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length)) + 2;
  return [
    'usage: rmt-serve <command> [options]',
    '',
    'commands:',
    ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}${c.summary}`),
    '',
    'Every setting is an environment variable and a flag (rmt-serve config lists them all).',
    'Without REDIS_URL, `serve` starts a private redis-server; the other commands then use it when run with the same RMT_DATA_DIR.',
    'rmt-serve <command> --help: the flags and settings of one command.',
  ].join('\n');
}

export function commandHelp(name: string): string {
  const c = COMMANDS[name]!;
  const line = (flag: string, doc: string) => (flag.length < 25 ? `  ${flag.padEnd(26)}${doc}` : `  ${flag}\n  ${''.padEnd(26)}${doc}`);
  const own = [...c.flags, HELP].map((f) =>
    line(`--${f.name}${f.value ? ` ${f.value}` : ''}`, f.doc + (f.default !== undefined ? ` (default: ${f.default})` : '')));
  const settings = c.settings.map((k) => {
    const s = SETTINGS[k];
    const def = JSON.stringify(s.default);
    const v = s.schema.type === 'integer' ? 'N' : s.schema.type === 'boolean' ? '1|0' : s.schema.enum ? s.schema.enum.join('|') : 'VALUE';
    return line(`${flagName(k)} ${v}`, `${s.env}, default ${def === '""' || def === '[]' ? 'none' : def}: ${s.doc}`);
  });
  return [
    `usage: ${c.synopsis}`,
    '',
    c.summary,
    '',
    'options:',
    ...own,
    ...(settings.length ? ['', 'settings (flag or environment variable; the flag wins):', ...settings] : []),
  ].join('\n');
}

export type Values = Record<string, string | boolean | string[] | undefined>;

export interface ParsedArgs {
  values: Values;
  /** The settings given as flags, as --name=value for loadConfig. */
  settingArgs: string[];
  help: boolean;
}

/** Edit distance, for "did you mean". */
function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length]!;
}

export function closest(word: string, candidates: string[]): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const d = c.startsWith(word) || word.startsWith(c) ? 1 : distance(word, c);
    if (d < bestD) [best, bestD] = [c, d];
  }
  return bestD <= Math.max(2, Math.floor(word.length / 3)) ? best : undefined;
}

/** Parses one command's arguments; errors (exit 2) name the flag, the closest known one, and --help. */
export function parseArgs(command: string, argv: readonly string[]): ParsedArgs {
  const c = COMMANDS[command]!;
  const own = new Map([...c.flags, HELP].map((f) => [f.name, f]));
  const settingFlags = new Map(c.settings.map((k) => [flagName(k).slice(2), k]));
  const otherSettings = new Set(ALL.map((k) => flagName(k).slice(2)));
  const hint = `rmt-serve ${command} --help lists them`;
  const values: Values = {};
  const settingArgs: string[] = [];
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '-h' || arg === '--help') {
      help = true;
      continue;
    }
    if (!arg.startsWith('--') || arg === '--') throw new ConfigError(`${command}: unexpected argument ${JSON.stringify(arg)} (${hint})`);
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq > 0 ? eq : undefined);
    const inline = eq > 0 ? arg.slice(eq + 1) : undefined;
    const spec = own.get(name);
    const isSetting = settingFlags.has(name);
    if (!spec && !isSetting) {
      if (otherSettings.has(name)) throw new ConfigError(`${command}: --${name} does not apply to this command (${hint})`);
      const near = closest(name, [...own.keys(), ...settingFlags.keys()]);
      throw new ConfigError(`${command}: unknown flag --${name}${near ? ` (did you mean --${near}?)` : ''}; ${hint}`);
    }
    if (spec && !spec.value) {
      if (inline !== undefined) throw new ConfigError(`${command}: --${name} takes no value`);
      if (name === 'help') help = true;
      else values[name] = true;
      continue;
    }
    const value = inline ?? argv[++i];
    if (value === undefined) throw new ConfigError(`${command}: --${name} needs a value`);
    if (isSetting) settingArgs.push(`--${name}=${value}`);
    else if (spec!.multiple) values[name] = [...((values[name] as string[] | undefined) ?? []), value];
    else values[name] = value;
  }
  return { values, settingArgs, help };
}
