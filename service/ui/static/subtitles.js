// SRT and WebVTT from a transcription's segments, as service/formats.py renders them (the
// browser test compares a downloaded file with the service's own srt for the same audio).

function timestamp(seconds, separator) {
  let millis = Math.round(Math.max(seconds, 0) * 1000);
  const hours = Math.floor(millis / 3_600_000);
  millis -= hours * 3_600_000;
  const minutes = Math.floor(millis / 60_000);
  millis -= minutes * 60_000;
  const secs = Math.floor(millis / 1000);
  millis -= secs * 1000;
  const two = (n) => String(n).padStart(2, "0");
  return `${two(hours)}:${two(minutes)}:${two(secs)}${separator}${String(millis).padStart(3, "0")}`;
}

export function toSrt(segments) {
  return segments
    .map((s, i) => `${i + 1}\n${timestamp(s.start, ",")} --> ${timestamp(s.end, ",")}\n${s.text.trim()}\n`)
    .join("\n");
}

export function toVtt(segments) {
  const blocks = segments.map((s) => `${timestamp(s.start, ".")} --> ${timestamp(s.end, ".")}\n${s.text.trim()}\n`);
  return "WEBVTT\n\n" + blocks.join("\n");
}
