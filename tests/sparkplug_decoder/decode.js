// The tests' independent Sparkplug B codec: Eclipse Tahu's own JavaScript codec (npm
// sparkplug-payload), the one Cirrus Link's and Eclipse's host tools descend from. One request per
// line on stdin, one JSON line per request on stdout:
//   a base64 payload      -> its decoding (64-bit integers as decimal strings, so that nothing is
//                            rounded on the way)
//   {"encode": payload}   -> {"base64": ...}, the payload as Tahu encodes it (metric types by
//                            name, as Tahu takes them: "Boolean", "Int64", ...), for a host's commands
const readline = require("readline");
const sparkplug = require("sparkplug-payload").get("spBv1.0");

function plain(value) {
  if (value === null || value === undefined) return value === undefined ? null : value;
  if (typeof value === "object" && typeof value.toString === "function" && "low" in value && "high" in value) {
    return value.toString();  // a Long
  }
  if (typeof value === "bigint") return value.toString();
  return value;
}

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  let out;
  if (line.startsWith("{")) {
    try {
      out = { base64: Buffer.from(sparkplug.encodePayload(JSON.parse(line).encode)).toString("base64") };
    } catch (err) {
      out = { error: String(err) };
    }
    process.stdout.write(JSON.stringify(out) + "\n");
    return;
  }
  try {
    const payload = sparkplug.decodePayload(Buffer.from(line.trim(), "base64"));
    out = {
      timestamp: plain(payload.timestamp),
      seq: plain(payload.seq),
      metrics: (payload.metrics || []).map((m) => ({
        name: m.name === undefined ? null : m.name,
        alias: plain(m.alias),
        timestamp: plain(m.timestamp),
        type: m.type === undefined ? null : m.type,
        value: plain(m.value),
        absent: m.value === undefined,  // no value field at all (not null): an empty tag
      })),
    };
  } catch (err) {
    out = { error: String(err) };
  }
  process.stdout.write(JSON.stringify(out) + "\n");
});
