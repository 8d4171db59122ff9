// Runs on the audio thread: the microphone's float samples (at the AudioContext's rate, which
// the page sets to the session's 24 kHz) as 100 ms chunks of 16-bit PCM, with their RMS level.

class Pcm16Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.size = Math.round(sampleRate / 10);
    this.chunk = new Int16Array(this.size);
    this.filled = 0;
    this.squares = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    for (let i = 0; i < channel.length; i++) {
      const x = Math.max(-1, Math.min(1, channel[i]));
      this.squares += x * x;
      this.chunk[this.filled++] = x < 0 ? x * 0x8000 : x * 0x7fff;
      if (this.filled === this.size) {
        const rms = Math.sqrt(this.squares / this.filled);
        this.port.postMessage({ pcm: this.chunk.buffer, rms }, [this.chunk.buffer]);
        this.chunk = new Int16Array(this.size); // the last one was handed over (its buffer is detached)
        this.filled = 0;
        this.squares = 0;
      }
    }
    return true;
  }
}

registerProcessor("pcm16-capture", Pcm16Capture);
