// Greedy decode speed of llama.cpp through node-llama-cpp's prebuilt CPU build: the peer that
// benchmarks/llm_bench.py --llama-node runs on the same GGUF as the exported graph.
//   node llama_cpp_decode.mjs MODEL.gguf TOKENS PROMPT_IDS_JSON THREADS   (run where node-llama-cpp is installed)
// Prints {"tokens_per_s": ...}; the first generated token carries the prompt eval and is left out.
import {getLlama} from "node-llama-cpp";

const [gguf, tokens, promptJson, threads] = process.argv.slice(2);
const llama = await getLlama({gpu: false, build: "never"});  // the prebuilt binary, never a local compile
const model = await llama.loadModel({modelPath: gguf});
const context = await model.createContext({contextSize: 1024, threads: Number(threads)});
const want = Number(tokens);
let done = -1;
let start = 0;
for await (const token of context.getSequence().evaluate(JSON.parse(promptJson), {temperature: 0})) {
  done += 1;
  if (done === 0) start = performance.now();
  if (done === want) break;
}
const seconds = (performance.now() - start) / 1000;
console.log(JSON.stringify({tokens_per_s: want / seconds, build: llama.buildType}));
await context.dispose();
await model.dispose();
await llama.dispose();
