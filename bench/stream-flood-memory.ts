// What a websocket client flooding 100 MB of appends costs the server: the API process' RSS growth
// over its baseline (no forced GC: what an operator sees), and the worker's. Twice: the worker
// tokenizing (RMT_TOKENIZER_THREADS=0; was bounded at 64 MB in test/flood.test.ts, measured +20..34 MB
// on 2 cores) and the API's tokenizer threads tokenizing (2; was bounded at 128 MB, measured +57..97 MB).
// test/flood.test.ts asserts the behaviour (the server stops reading, keeps serving); this prints the figures.
//
//   node --import tsx bench/stream-flood-memory.ts            (RUNS: per setting, default 3)
import { runFlood } from '../test/support/flood.ts';
import { startRedis } from '../test/support/redis-server.ts';

const RUNS = Number(process.env.RUNS ?? 3);
const redis = await startRedis();
try {
  for (const tokenizerThreads of [0, 2]) {
    for (let i = 0; i < RUNS; i++) {
      const r = await runFlood(redis.url, tokenizerThreads, 80);
      const mb = (b: number) => Number((b / 2 ** 20).toFixed(1));
      console.log(JSON.stringify({
        tokenizerThreads, run: i + 1, apiRssMb: mb(r.rss.api), apiGrowthMb: mb(r.rss.apiPeak - r.rss.api),
        workerRssMb: mb(r.rss.worker), workerGrowthMb: mb(r.rss.workerPeak - r.rss.worker), acks: r.acks, unsentMb: mb(r.unsent), healthy: `${r.healthy}/${r.checks}`,
      }));
    }
  }
} finally {
  await redis.stop();
}
