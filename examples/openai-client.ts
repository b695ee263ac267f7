// The official openai client against rmt-serve: only the base URL changes.
//   npm start   (in another terminal)
//   node --import tsx examples/openai-client.ts
import OpenAI from 'openai';

const client = new OpenAI({ baseURL: process.env.RMT_URL ?? 'http://127.0.0.1:8080/v1', apiKey: process.env.RMT_API_KEY ?? 'none' });

const done = await client.completions.create({ model: 'rmt-brown-lm', prompt: 'The jury said', max_tokens: 30, temperature: 0 });
console.log(done.choices[0]!.text, done.usage);

const stream = await client.completions.create({ model: 'rmt-brown-lm', prompt: 'In the morning', max_tokens: 40, stream: true, seed: 7, temperature: 0.8 });
for await (const chunk of stream) process.stdout.write(chunk.choices[0]?.text ?? '');
process.stdout.write('\n');
