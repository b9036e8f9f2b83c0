// Microphone capture: resamples the context's rate (44.1 or 48 kHz) to 16 kHz mono and posts
// 20 ms PCM16 frames (320 samples) with the frame's RMS level, for the edge's 0x01 binary frames.
const TARGET_RATE = 16000;
const FRAME = 320;

class MicCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / TARGET_RATE; // input samples per output sample
    this.pos = 0; // fractional read position into the carried-over input
    this.carry = new Float32Array(0);
    this.out = new Int16Array(FRAME);
    this.filled = 0;
    this.sumSquares = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    const input = new Float32Array(this.carry.length + channel.length);
    input.set(this.carry);
    input.set(channel, this.carry.length);
    // Averaging over one output period is the low-pass: enough anti-aliasing for speech at 16 kHz.
    const half = Math.max(1, Math.floor(this.step / 2));
    while (this.pos + half + 1 < input.length) {
      const i = Math.floor(this.pos);
      let acc = 0;
      let n = 0;
      for (let k = Math.max(0, i - half); k <= i + half; k++) { acc += input[k]; n++; }
      const clipped = Math.max(-1, Math.min(1, acc / n));
      this.out[this.filled++] = clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff;
      this.sumSquares += clipped * clipped;
      if (this.filled === FRAME) {
        this.port.postMessage({ pcm: this.out.buffer, level: Math.sqrt(this.sumSquares / FRAME) }, [this.out.buffer]);
        this.out = new Int16Array(FRAME);
        this.filled = 0;
        this.sumSquares = 0;
      }
      this.pos += this.step;
    }
    const keep = Math.max(0, Math.floor(this.pos) - half);
    this.carry = input.slice(keep);
    this.pos -= keep;
    return true;
  }
}

registerProcessor("mic-capture", MicCapture);
