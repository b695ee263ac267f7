// Crash trials: a fault-free reference run, then N trials of the same document under faults
// (README.md in this folder). Exit status 0 only when every trial's snapshot is identical to the
// reference's.
//
//   node --import tsx bench/chaos/crash-trials.ts [--short] [--trials 3] [--kills 50] [--tokens 300000] [--seed 1]
import { rmSync } from 'node:fs';
import { parseArgs } from 'node:util';
import path from 'node:path';
import { installExitHandlers } from './procs.ts';
import { log, OUT_DIR, runId, table, writeJson } from './report.ts';
import { subSeed } from './rng.ts';
import { snapshotHeader } from './session-client.ts';
import { buildDocument } from './text.ts';
import { runTrial, type TrialResult } from './trial.ts';

const { values: a } = parseArgs({
  options: {
    short: { type: 'boolean', default: false },
    trials: { type: 'string' },
    kills: { type: 'string' },
    'api-kills': { type: 'string' },
    'redis-kills': { type: 'string' },
    'loop-share': { type: 'string' },
    'loop-min': { type: 'string' },
    'loop-max': { type: 'string' },
    tokens: { type: 'string' },
    seed: { type: 'string', default: '1' },
    'chunk-min': { type: 'string' },
    'chunk-max': { type: 'string' },
    'window-tokens': { type: 'string' },
    'stall-s': { type: 'string' },
    'trial-timeout-s': { type: 'string' },
    'keep-data': { type: 'boolean', default: false },
    apis: { type: 'string', default: '2' },
    workers: { type: 'string', default: '3' },
  },
});
const short = a.short!;
const num = (v: string | undefined, full: number, shortDef: number) => (v !== undefined ? Number(v) : short ? shortDef : full);
const opts = {
  short,
  trials: num(a.trials, 3, 1),
  workerKills: num(a.kills, 50, 20),
  apiKills: num(a['api-kills'], 2, 1),
  redisKills: num(a['redis-kills'], 1, 1),
  loopShare: num(a['loop-share'], 0.5, 0.8),
  loopMin: num(a['loop-min'], 3, 16),
  loopMax: num(a['loop-max'], 15, 16),
  tokens: num(a.tokens, 300_000, 80_000),
  seed: Number(a.seed),
  chunkMin: num(a['chunk-min'], 2048, 32768),
  chunkMax: num(a['chunk-max'], 65536, 65536),
  windowTokens: num(a['window-tokens'], 32768, 16384),
  stallS: num(a['stall-s'], 120, 60),
  trialTimeoutS: num(a['trial-timeout-s'], 3600, 480),
  apis: Number(a.apis),
  workers: Number(a.workers),
  model: 'rmt-brown-small',
  /** Keep every trial's Redis data dir (by default only those of trials not identical). */
  keepData: a['keep-data']!,
};
for (const [k, v] of Object.entries(opts)) if (typeof v === 'number' && !(v >= 0)) throw new Error(`bad option ${k}: ${v}`);

installExitHandlers();
const id = runId(short ? 'crash-short' : 'crash');
const logsDir = path.join(OUT_DIR, 'logs', id);
const doc = buildDocument(opts.seed, opts.tokens);
log(`document: ${doc.files.length} held-out Brown files (${doc.files.slice(0, 6).join(' ')}${doc.files.length > 6 ? ' ...' : ''}), ${doc.text.length} chars, ${doc.tokens} tokens; logs in ${logsDir}`);

const common = { doc, model: opts.model, stallMs: opts.stallS * 1000, timeoutMs: opts.trialTimeoutS * 1000, logsDir };
log('reference run: 1 api, 1 worker, 16 KiB chunks, no faults');
const ref = await runTrial({ ...common, name: 'reference', seed: opts.seed, chunkMin: 16384, chunkMax: 16384, windowTokens: Infinity, apis: 1, workers: 1 });
log(`reference: ${ref.result.outcome} in ${ref.result.timeS} s, tokens ${ref.result.tokensIngested}, snapshot ${ref.result.snapshotSha256?.slice(0, 16) ?? '-'}`);

/** A trial's Redis data dir (its AOF) is only kept as evidence. */
const dropData = (t: TrialResult) => rmSync(path.join(t.logsDir, 'redis'), { recursive: true, force: true });
const trials: TrialResult[] = [];
if (!ref.snapshot) {
  log(`the reference run did not finish (${ref.result.reason}); no trials`);
} else {
  for (let t = 1; t <= opts.trials; t++) {
    const seed = subSeed(opts.seed, 'trial', t);
    log(`trial ${t}/${opts.trials}: ${opts.apis} apis, ${opts.workers} workers, ${opts.workerKills} worker kills, ${opts.apiKills} api, ${opts.redisKills} redis`);
    const { result, snapshot } = await runTrial({
      ...common, name: `trial-${t}`, seed, chunkMin: opts.chunkMin, chunkMax: opts.chunkMax, windowTokens: opts.windowTokens,
      apis: opts.apis, workers: opts.workers,
      faults: { workerKills: opts.workerKills, apiKills: opts.apiKills, redisKills: opts.redisKills, loopShare: opts.loopShare, loopMin: opts.loopMin, loopMax: opts.loopMax },
    });
    if (snapshot) {
      result.identical = snapshot.equals(ref.snapshot);
      if (!result.identical) result.reason ||= `snapshot differs: header ${JSON.stringify(snapshotHeader(snapshot))} vs reference ${JSON.stringify(snapshotHeader(ref.snapshot))}`;
    }
    const f = result.faults;
    log(`trial ${t}: ${result.outcome}${result.identical !== undefined ? `, identical ${result.identical}` : ''}, ${result.timeS} s, kills worker ${f?.workerKills ?? 0} (holder ${f?.holderKills ?? 0}) api ${f?.apiKills ?? 0} redis ${f?.redisKills ?? 0}${result.reason ? `: ${result.reason.slice(0, 300)}` : ''}`);
    const failures = Object.entries(result.aofFailedReasons);
    if (failures.length) log(`trial ${t}: job failures recorded in its Redis AOF (diagnostics): ${failures.map(([k, v]) => `${v}x "${k}"`).join('; ')}; failed jobs: ${result.aofFailedJobs.join(' ') || '-'}`);
    trials.push(result);
    if (result.identical && !opts.keepData) dropData(result);
  }
}

if (!opts.keepData && ref.snapshot) dropData(ref.result);
const identical = trials.filter((t) => t.identical === true).length;
const file = writeJson(id, { id, options: opts, document: { files: doc.files, chars: doc.text.length, tokens: doc.tokens, sha256: doc.sha256 }, reference: ref.result, trials, summary: { trials: trials.length, identical } });

const rows = [ref.result, ...trials].map((t) => [
  t.name, t.outcome, t.identical === undefined ? (t.name === 'reference' ? 'ref' : '-') : t.identical ? 'yes' : 'NO',
  t.faults ? `${t.faults.workerKills} (${t.faults.holderKills})` : '-', t.faults?.apiKills ?? '-', t.faults?.redisKills ?? '-',
  t.timeS, `${t.tokensIngested}/${t.expectedTokens}`, `${t.ackedSeq ?? '-'}/${t.chunks}`, t.stream ? t.stream.connects : '-', t.stream ? t.stream.rollbacks : '-',
  t.unexpectedExits.length, t.aofFailedJobs.length, t.reason.slice(0, 140),
]);
console.log(table(['trial', 'outcome', 'identical', 'worker kills (holder)', 'api kills', 'redis kills', 'time s', 'tokens', 'acked seq', 'ws connects', 'rollbacks', 'unexpected exits', 'failed jobs (AOF)', 'note'], rows));
console.log(`trials ${trials.length}, identical ${identical}`);
console.log(`results: ${file}`);
process.exitCode = ref.snapshot && identical === opts.trials ? 0 : 1;
