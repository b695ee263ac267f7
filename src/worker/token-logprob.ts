// A token's log-probability under raw logits, with the most likely alternatives: what scoring and a
// generation's logprobs report (its own module, so the scorer and the generation share it without a cycle).
import type { TokenLogprob } from '../queue/request.ts';

/** log-softmax of the raw logits at `id`, and the `k` most likely ids (float64 sums). */
export function tokenLogprob(logits: Float32Array, id: number, k: number): TokenLogprob {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i]! > max) max = logits[i]!;
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i]! - max);
  const lse = max + Math.log(sum);
  const top: { id: number; logprob: number }[] = [];
  for (let i = 0; i < logits.length && k > 0; i++) {
    const v = logits[i]!;
    if (top.length < k || v > top[top.length - 1]!.logprob) {
      top.push({ id: i, logprob: v });
      top.sort((a, b) => b.logprob - a.logprob || a.id - b.id);
      if (top.length > k) top.pop();
    }
  }
  return { logprob: logits[id]! - lse, top: top.map((t) => ({ id: t.id, logprob: t.logprob - lse })) };
}
