// PicoGPT in the browser: the .onnx contract of picogpt/contract.py (and runtime/decoder.py's protocol) run by onnxruntime-web (WASM).
// One module, no bundler: the tokenizer, the window protocol and the sampler of picogpt/sampling.py.
//
//   const model = await PicoGPT.load({ base: './', ort });            // reads model.json, then the .onnx
//   const text = await model.generate('ROMEO:', { temperature: 0 });  // greedy = picogpt-run --temperature 0
//   for await (const piece of model.stream('ROMEO:', {})) { ... }    // the streaming form
//   model.stop();                                                      // ends the running generation

export const EMPTY_PROMPT = '\n'; // as runtime/generator.py: an empty prompt starts a fresh paragraph
const UNKNOWN_ID = 0;
const YIELD_EVERY_MS = 25; // hand the event loop back this often, so the text paints and Stop is clickable

/** A settings or input problem the page shows as one inline line (the CLI's PicoError). */
export class PicoError extends Error {}

/** The character tokenizer of picogpt/tokenizer.py, read from the file's `picogpt.tokenizer`. */
export class Tokenizer {
  constructor(spec) {
    this.vocab = spec.vocab;
    this.charToId = new Map();
    const specials = [];
    this.vocab.forEach((s, i) => {
      if ([...s].length === 1) this.charToId.set(s, i);
      else if (s.length > 1 && i !== UNKNOWN_ID) specials.push(s);
    });
    this.specialToId = new Map(specials.map((s) => [s, this.vocab.indexOf(s)]));
    // special tokens are matched before single characters, longest first, as the Python regex does
    const alts = specials.sort((a, b) => b.length - a.length).map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
    this.specialRe = alts.length ? new RegExp(`(${alts.join('|')})`) : null;
  }

  /** Text -> {ids, unknown}: lowercased lookup; characters outside the table become id 0 and are counted. */
  encode(text) {
    const ids = [];
    let unknown = 0;
    for (const piece of this.specialRe ? text.split(this.specialRe) : [text]) {
      const special = this.specialToId.get(piece);
      if (special !== undefined) { ids.push(special); continue; }
      for (const ch of piece) { // code points, as Python iterates a str
        let id = this.charToId.get(ch);
        if (id === undefined) {
          const low = ch.toLowerCase();
          id = [...low].length === 1 ? (this.charToId.get(low) ?? UNKNOWN_ID) : UNKNOWN_ID;
          if (id === UNKNOWN_ID) unknown += 1;
        }
        ids.push(id);
      }
    }
    return { ids, unknown };
  }

  decode(ids) { return ids.map((i) => this.vocab[i]).join(''); }
}

/** Check and normalise sampling settings with the CLI's rules and messages (picogpt/sampling.py validate). */
export function checkSettings(opts, vocabSize) {
  const num = (name, value, fallback) => {
    if (value === undefined || value === null || value === '') return fallback;
    const x = typeof value === 'number' ? value : Number(String(value).trim());
    if (!Number.isFinite(x)) throw new PicoError(`${name} must be a number, got "${value}"`);
    return x;
  };
  const s = {
    maxNewTokens: num('maxNewTokens', opts.maxNewTokens, 500),
    temperature: num('temperature', opts.temperature, 0.8),
    topK: num('topK', opts.topK, null),
    topP: num('topP', opts.topP, 1.0),
    repetitionPenalty: num('repetitionPenalty', opts.repetitionPenalty, 1.0),
    seed: num('seed', opts.seed, null),
  };
  if (!Number.isInteger(s.maxNewTokens) || s.maxNewTokens < 0) {
    throw new PicoError(`maxNewTokens must be a whole number >= 0, got ${s.maxNewTokens}`);
  }
  if (s.temperature < 0) throw new PicoError(`temperature must be >= 0 (0 = greedy), got ${s.temperature}`);
  if (s.topK !== null && (!Number.isInteger(s.topK) || s.topK < 1 || s.topK > vocabSize)) {
    throw new PicoError(`topK must be a whole number between 1 and the vocabulary size ${vocabSize}, got ${s.topK}`);
  }
  if (!(s.topP > 0 && s.topP <= 1)) throw new PicoError(`topP must be in (0, 1], got ${s.topP}`);
  if (!(s.repetitionPenalty > 0)) throw new PicoError(`repetitionPenalty must be > 0 (1 = off), got ${s.repetitionPenalty}`);
  if (s.seed !== null && (!Number.isInteger(s.seed) || s.seed < 0)) {
    throw new PicoError(`seed must be a whole number >= 0, got ${s.seed}`);
  }
  return s;
}

/** mulberry32: a small seeded generator of uniforms in (0, 1) (seeded runs repeat; they need not match numpy). */
function rng(seed) {
  let a = (seed ?? Math.floor(Math.random() * 2 ** 32)) >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return (((t ^ (t >>> 14)) >>> 0) + 0.5) / 4294967296;
  };
}

/** First index of the largest value (numpy's argmax tie rule, so greedy text matches picogpt-run). */
function argmax(x) {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/** The sampler of picogpt/sampling.py: repetition penalty, temperature, top-k, top-p, one Gumbel-max draw. */
export class Sampler {
  constructor(settings, vocabSize) {
    this.s = settings;
    this.random = rng(settings.seed);
    this.seen = new Uint8Array(vocabSize); // only read when the penalty is on
  }

  observe(ids) { for (const i of ids) this.seen[i] = 1; }

  sample(logits) {
    const { temperature, topK, topP, repetitionPenalty: p } = this.s;
    const x = Float64Array.from(logits); // float64 like numpy; the model's buffer stays untouched
    if (p !== 1) for (let i = 0; i < x.length; i++) if (this.seen[i]) x[i] = x[i] > 0 ? x[i] / p : x[i] * p;
    let id;
    if (temperature === 0) id = argmax(x);
    else {
      for (let i = 0; i < x.length; i++) x[i] /= temperature;
      if (topK !== null && topK < x.length) {
        const kth = Float64Array.from(x).sort()[x.length - topK];
        for (let i = 0; i < x.length; i++) if (x[i] < kth) x[i] = -Infinity;
      }
      if (topP < 1) this.topP(x, topP);
      for (let i = 0; i < x.length; i++) x[i] -= Math.log(-Math.log(this.random()));
      id = argmax(x);
    }
    this.seen[id] = 1;
    return id;
  }

  /** Keep the smallest most-probable prefix whose mass reaches topP (the first token always stays). */
  topP(x, topP) {
    const max = Math.max(...x);
    const probs = Array.from(x, (v) => Math.exp(v - max));
    const total = probs.reduce((a, b) => a + b, 0);
    const order = probs.map((_, i) => i).sort((a, b) => probs[b] - probs[a] || a - b); // stable, descending
    let mass = 0;
    for (const i of order) {
      if (mass >= topP) x[i] = -Infinity;
      mass += probs[i] / total;
    }
  }
}

/**
 * The window rule of picogpt/windows.py plan_chunks: chunks of new ids, each within one window; a window that
 * follows a full one first re-reads the stream's last `overlap` ids (`replay`).
 */
export function* planChunks(pos, nNew, contextLen, overlap = 0) {
  const nPositions = contextLen + 1;
  for (let i = 0; i < nNew;) {
    const rollOver = pos === nPositions;
    const replay = rollOver ? overlap : 0;
    if (rollOver) pos = 0;
    const take = Math.min(nPositions - Math.max(pos, 1) - replay, nNew - i);
    yield { start: i, take, pos, rollOver, replay };
    pos += take + replay + (pos === 0 ? 1 : 0);
    i += take;
  }
}

const yieldToPage = () => new Promise((resolve) => {
  // a MessageChannel task runs at once (setTimeout(0) is clamped to 4 ms after a few nested calls)
  const ch = new MessageChannel();
  ch.port1.onmessage = () => { ch.port1.close(); resolve(); };
  ch.port2.postMessage(0);
});

/** The fused layout's cache: per layer a [1, H, n_positions, D] buffer of our own, fed as past_* each step.
 * ORT-web has no IOBinding on WASM, so the page's file is the web variant of the graph (runtime/webgraph.py):
 * it returns only the rows just written (one `new_rows` output), which land in these buffers, instead of
 * 2 MB of present_* copied out of the WASM heap into fresh arrays at every step. */
class FusedCache {
  constructor(ort, session, config) {
    this.ort = ort;
    this.session = session;
    this.rows = config.context_len + 1;
    this.headSize = config.n_embd / config.n_head;
    this.nHead = config.n_head;
    const dims = [1, config.n_head, this.rows, this.headSize];
    this.past = {}; // the Tensors wrap the buffers, so writing a buffer updates the next step's input
    for (let i = 0; i < config.n_layer; i++) {
      for (const kind of ['key', 'value']) {
        this.past[`past_${kind}_${i}`] = new ort.Tensor('float32', new Float32Array(dims.reduce((a, b) => a * b)), dims);
      }
    }
  }

  rewind() {} // rows at or after total_sequence_length are never read, only overwritten

  async run(ids, context, pos) {
    const { ort } = this;
    const n = ids.length;
    const int64 = (values) => new ort.Tensor('int64', BigInt64Array.from(values, BigInt), [1, values.length]);
    const out = await this.session.run({
      ...this.past,
      input_ids: int64(ids),
      position_ids: int64(ids.map((_, j) => pos + j)),
      context: new ort.Tensor('float32', context, [1, context.length]),
      seqlens_k: new ort.Tensor('int32', Int32Array.of(pos + n - 1), [1]),
      total_sequence_length: new ort.Tensor('int32', Int32Array.of(pos + n), []),
      web_row_start: new ort.Tensor('int64', BigInt64Array.of(BigInt(pos)), [1]),
      web_row_end: new ort.Tensor('int64', BigInt64Array.of(BigInt(pos + n)), [1]),
    });
    const rows = out.new_rows.data; // [2 * n_layer, H, n, D]: layer i's key rows at 2i, its value rows at 2i + 1
    const width = n * this.headSize; // one head's new rows
    Object.values(this.past).forEach((tensor, b) => { // past_key_0, past_value_0, past_key_1, ...
      for (let h = 0; h < this.nHead; h++) {
        const from = (b * this.nHead + h) * width;
        tensor.data.set(rows.subarray(from, from + width), (h * this.rows + pos) * this.headSize);
      }
    });
    return [out.logits.data, out.hidden_sum.data];
  }
}

/** The portable layout's cache, [n_layer, 1, H, past, D]: grows by the new rows each step. */
class PortableCache {
  constructor(ort, session, config) {
    this.ort = ort;
    this.session = session;
    this.dims = [config.n_layer, 1, config.n_head, 0, config.n_embd / config.n_head];
    this.rewind();
  }

  rewind() {
    const empty = new this.ort.Tensor('float32', new Float32Array(0), this.dims);
    this.key = empty;
    this.value = empty;
  }

  async run(ids, context) {
    const { ort } = this;
    const out = await this.session.run({
      input_ids: new ort.Tensor('int64', BigInt64Array.from(ids, BigInt), [1, ids.length]),
      context: new ort.Tensor('float32', context, [1, context.length]),
      past_key: this.key,
      past_value: this.value,
    });
    this.key = out.present_key;
    this.value = out.present_value;
    return [out.logits.data, out.hidden_sum.data];
  }
}

/** A loaded model: metadata, tokenizer, an onnxruntime-web session and one stream's state at a time. */
export class PicoGPT {
  /**
   * Load `model.json` (the sidecar with the file's picogpt.* metadata) and the model it names from `base`.
   * `ort` is the onnxruntime-web module; `wasmBinary` (an ArrayBuffer or a promise of one) skips ORT's own fetch.
   */
  static async load({ base = './', ort, sidecar = 'model.json', wasmBinary } = {}) {
    const t0 = performance.now();
    const url = (name) => new URL(name, new URL(base, globalThis.location?.href ?? import.meta.url)).href;
    const side = await (await fetch(url(sidecar))).json();
    const modelBytes = fetch(url(side.model)).then((r) => {
      if (!r.ok) throw new PicoError(`${side.model}: HTTP ${r.status}`);
      return r.arrayBuffer();
    });
    ort.env.wasm.numThreads = 1; // one thread: no cross-origin isolation needed, and the figure we report
    if (wasmBinary) ort.env.wasm.wasmBinary = await wasmBinary;
    const session = await ort.InferenceSession.create(new Uint8Array(await modelBytes), {
      executionProviders: ['wasm'], graphOptimizationLevel: 'all',
    });
    return new PicoGPT(ort, session, side.metadata, performance.now() - t0);
  }

  constructor(ort, session, metadata, loadMs) {
    this.ort = ort;
    this.session = session;
    this.metadata = metadata;
    this.config = JSON.parse(metadata['picogpt.config']);
    this.tokenizer = new Tokenizer(JSON.parse(metadata['picogpt.tokenizer']));
    this.slotId = JSON.parse(metadata['picogpt.protocol']).slot_id;
    this.layout = metadata['picogpt.layout'] ?? 'portable';
    this.fingerprint = JSON.parse(metadata['picogpt.fingerprint'] ?? '{}');
    this.overlap = Number(metadata['picogpt.overlap'] ?? 0); // files written before it existed re-read nothing
    this.stats = { loadMs };
    this.stopped = false;
    this.running = false;
  }

  /** A fresh stream: context vector, running ln_f sum, filled positions, cache, its last ids. */
  newState() {
    const n = this.config.n_embd;
    const Cache = this.layout === 'fused' ? FusedCache : PortableCache;
    return { context: new Float32Array(n), hiddenSum: new Float32Array(n), pos: 0,
      cache: new Cache(this.ort, this.session, this.config), recent: [] };
  }

  /** Feed ids after `state` (updated in place), a window at a time; returns the logits of the last one. */
  async feed(ids, state) {
    let logits = null;
    for (const chunk of planChunks(state.pos, ids.length, this.config.context_len, this.overlap)) {
      if (chunk.rollOver) { // the full window's mean ln_f output becomes the next window's context vector
        for (let j = 0; j < state.context.length; j++) state.context[j] = state.hiddenSum[j] / state.pos;
        state.hiddenSum.fill(0);
        state.cache.rewind();
      }
      let part = ids.slice(chunk.start, chunk.start + chunk.take);
      if (chunk.replay) part = [...state.recent, ...ids.slice(0, chunk.start)].slice(-chunk.replay).concat(part);
      if (chunk.pos === 0) part = [this.slotId, ...part];
      let hsum;
      [logits, hsum] = await state.cache.run(part, state.context, chunk.pos);
      for (let j = 0; j < hsum.length; j++) state.hiddenSum[j] += hsum[j]; // float32 adds, as numpy's
      state.pos = chunk.pos + part.length;
    }
    if (this.overlap) state.recent = [...state.recent, ...ids].slice(-this.overlap);
    return logits;
  }

  /** Prompt -> {ids, unknown}: an empty prompt is "\n", as in picogpt-run. */
  encodePrompt(prompt) { return this.tokenizer.encode(prompt === '' ? EMPTY_PROMPT : prompt); }

  /**
   * The streaming form: yields text pieces, one per token. `opts` as generate(); `opts.onWarning(message)`
   * hears of prompt characters outside the vocabulary. Ends early after stop().
   */
  async *stream(prompt, opts = {}) {
    if (typeof prompt !== 'string') throw new PicoError('the prompt must be a string');
    if (this.running) throw new PicoError('a generation is already running: stop() it first');
    const s = checkSettings(opts, this.config.vocab_size);
    const { ids, unknown } = this.encodePrompt(prompt);
    if (unknown) opts.onWarning?.(`${unknown} prompt character(s) are not in the vocabulary; they become <?>`);
    this.stopped = false;
    this.running = true;
    try {
      yield* this.decode(ids, s);
    } finally {
      this.running = false;
    }
  }

  /** Prefill `ids`, then sample and feed up to s.maxNewTokens ids, yielding each one's text. */
  async *decode(ids, s) {
    const sampler = new Sampler(s, this.config.vocab_size);
    sampler.observe(ids);
    const state = this.newState();
    const t0 = performance.now();
    let logits = await this.feed(ids, state);
    let tFirst = performance.now();
    this.stats = { ...this.stats, prefillMs: tFirst - t0, tokens: 0, decodeMs: 0, tokensPerSecond: 0 };
    let lastYield = tFirst;
    let fed = 0; // decode steps since the first token (which comes with the prefill, timed apart), as --stats
    for (let i = 0; i < s.maxNewTokens && !this.stopped; i++) {
      const id = sampler.sample(logits);
      this.stats.tokens = i + 1;
      yield this.tokenizer.decode([id]);
      if (i === 0) tFirst = performance.now();
      if (i + 1 < s.maxNewTokens && !this.stopped) {
        logits = await this.feed([id], state);
        fed += 1;
      }
      const now = performance.now();
      this.stats.decodeMs = now - tFirst;
      this.stats.tokensPerSecond = fed ? (1000 * fed) / (now - tFirst) : 0;
      if (now - lastYield > YIELD_EVERY_MS) { await yieldToPage(); lastYield = performance.now(); }
    }
  }

  /** The continuation of `prompt` (temperature 0 = greedy); `opts.onToken(piece)` streams it as it comes. */
  async generate(prompt, opts = {}) {
    let text = '';
    for await (const piece of this.stream(prompt, opts)) {
      text += piece;
      opts.onToken?.(piece);
    }
    return text;
  }

  /** End the running generation after the current token; generate() resolves with the text so far. */
  stop() { this.stopped = true; }
}
