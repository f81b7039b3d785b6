// Audio worklets of the kiosk page: the microphone side turns the context's float audio into PCM16
// frames at the rate the server takes; the speaker side plays the agent's PCM16 from a small queue
// that the page can drop at once (barge-in). Both run on the audio thread, so they allocate little.

// A streaming windowed-sinc resampler between any two rates. Down-sampling lowers the cutoff to the
// new Nyquist rate so that the 48 kHz microphone does not alias into the 16 kHz speech band.
const RESOLUTION = 512; // kernel table points per sample
const SILENT = 0.002; // |sample| at or below this counts as silence (-54 dBFS)

class Resampler {
  constructor(fromRate, toRate, halfTaps = 12) {
    this.step = fromRate / toRate; // input samples per output sample
    this.cutoff = Math.min(1, toRate / fromRate) * 0.95;
    this.halfTaps = Math.ceil(halfTaps / Math.min(1, toRate / fromRate));
    this.history = new Float32Array(0); // input samples still needed by the next outputs
    this.position = 0; // where the next output falls, in samples of `history`
  }

  // The kernel is tabulated once (RESOLUTION points per input sample): the audio thread then
  // spends a table look-up per tap instead of a sine and a cosine.
  kernel(x) {
    if (!this.table) {
      const size = (this.halfTaps + 1) * RESOLUTION;
      this.table = new Float32Array(size + 1);
      for (let i = 0; i <= size; i++) {
        const t = i / RESOLUTION;
        const window = 0.5 + 0.5 * Math.cos((Math.PI * t) / (this.halfTaps + 1)); // Hann
        this.table[i] = t === 0 ? this.cutoff : (Math.sin(Math.PI * this.cutoff * t) / (Math.PI * t)) * window;
      }
    }
    return this.table[Math.round(Math.abs(x) * RESOLUTION)];
  }

  // input: Float32Array at fromRate -> Float32Array at toRate (may be empty while filling up)
  push(input) {
    if (this.step === 1) return input;
    const joined = new Float32Array(this.history.length + input.length);
    joined.set(this.history);
    joined.set(input, this.history.length);
    const out = [];
    // Each output needs halfTaps samples on both sides of its position.
    while (this.position + this.halfTaps < joined.length) {
      const centre = Math.floor(this.position);
      let sum = 0;
      for (let i = centre - this.halfTaps + 1; i <= centre + this.halfTaps; i++) {
        if (i >= 0) sum += joined[i] * this.kernel(this.position - i);
      }
      out.push(sum);
      this.position += this.step;
    }
    const keep = Math.max(0, Math.floor(this.position) - this.halfTaps);
    this.history = joined.slice(keep);
    this.position -= keep;
    return Float32Array.from(out);
  }
}

// Microphone -> PCM16 frames of `frameMs` at `targetRate`, posted to the page as ArrayBuffers.
class MicCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate, frameMs } = options.processorOptions;
    this.resampler = new Resampler(sampleRate, targetRate);
    this.frameSize = Math.round((targetRate * frameMs) / 1000);
    this.frame = new Int16Array(this.frameSize);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0][0]; // mono is enough; absent while the track is not yet live
    if (!channel) return true;
    for (const sample of this.resampler.push(channel)) {
      const clipped = Math.max(-1, Math.min(1, sample));
      this.frame[this.filled++] = Math.round(clipped * 32767);
      if (this.filled === this.frameSize) {
        const buffer = this.frame.buffer;
        this.port.postMessage(buffer, [buffer]); // handed over (detached here): start a fresh frame
        this.frame = new Int16Array(this.frameSize);
        this.filled = 0;
      }
    }
    return true;
  }
}

// The agent's PCM16 at `sourceRate` -> the speaker, through a queue that starts after a short
// prebuffer (network jitter), drops everything on "flush" and never grows past `maxQueueMs`.
class SpeakerQueue extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { sourceRate, prebufferMs, maxQueueMs } = options.processorOptions;
    this.resampler = new Resampler(sourceRate, sampleRate);
    this.prebuffer = (sampleRate * prebufferMs) / 1000;
    this.maxQueue = (sampleRate * maxQueueMs) / 1000;
    this.chunks = []; // Float32Arrays at the context rate, oldest first
    this.offset = 0; // samples of chunks[0] already played
    this.queued = 0;
    this.playing = false;
    this.stats = { played: 0, nonSilentPlayed: 0, underruns: 0, dropped: 0, skippedSilence: 0 };
    this.sinceReport = 0;
    this.port.onmessage = (message) => this.receive(message.data);
  }

  receive(data) {
    if (data === "flush") {
      this.stats.dropped += this.queued;
      this.chunks = [];
      this.offset = 0;
      this.queued = 0;
      this.playing = false;
      return;
    }
    const pcm = new Int16Array(data);
    const floats = new Float32Array(pcm.length);
    for (let i = 0; i < pcm.length; i++) floats[i] = pcm[i] / 32768;
    const chunk = this.resampler.push(floats);
    if (chunk.length === 0) return;
    if (this.queued - this.offset > 2 * this.prebuffer && chunk.every((x) => Math.abs(x) < SILENT)) {
      // The server's clock (paced by our microphone) runs a little ahead of our speaker's: skip a
      // silent chunk now and then rather than let the queue, and the agent's lag, grow.
      this.stats.skippedSilence += chunk.length;
      return;
    }
    this.chunks.push(chunk);
    this.queued += chunk.length;
    while (this.queued - this.offset > this.maxQueue && this.chunks.length > 1) {
      // The sender's clock runs ahead of ours: drop the oldest audio rather than lag behind.
      const oldest = this.chunks.shift();
      this.stats.dropped += oldest.length - this.offset;
      this.queued -= oldest.length;
      this.offset = 0;
    }
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    out.fill(0);
    if (!this.playing && this.queued - this.offset >= this.prebuffer) this.playing = true;
    let written = 0;
    while (this.playing && written < out.length && this.chunks.length > 0) {
      const chunk = this.chunks[0];
      const n = Math.min(out.length - written, chunk.length - this.offset);
      out.set(chunk.subarray(this.offset, this.offset + n), written);
      written += n;
      this.offset += n;
      if (this.offset === chunk.length) {
        this.chunks.shift();
        this.queued -= chunk.length;
        this.offset = 0;
      }
    }
    if (this.playing && written < out.length) {
      this.stats.underruns += 1;
      this.playing = false; // refill the prebuffer before playing on
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out); // same sound on every channel
    this.count(out, written);
    return true;
  }

  count(out, written) {
    this.stats.played += written;
    for (let i = 0; i < written; i++) if (Math.abs(out[i]) > SILENT) this.stats.nonSilentPlayed += 1;
    this.sinceReport += out.length;
    if (this.sinceReport >= sampleRate / 10) { // ten reports a second are plenty for a display
      this.port.postMessage({ ...this.stats, queuedMs: ((this.queued - this.offset) / sampleRate) * 1000 });
      this.sinceReport = 0;
    }
  }
}

registerProcessor("mic-capture", MicCapture);
registerProcessor("speaker-queue", SpeakerQueue);
