// MPS naming in JavaScript: {AppName}/{StreamName}/{rand}/{start}_{Sequence}.{ext}, a fresh
// random string per file so two tasks recording one stream never overwrite each other.

const ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789";
const EXT = { flv: "flv", hls: "m3u8", mp4: "mp4", aac: "aac" };

function rand(seed, n) {
  // u64 arrives as a BigInt or a Number, depending on the engine's bindings.
  let s = BigInt.asUintN(64, typeof seed === "bigint" ? seed : BigInt(Math.floor(Number(seed))));
  let out = "";
  for (let i = 0; i < n; i++) {
    s = BigInt.asUintN(64, s * 6364136223846793005n + 1442695040888963407n);
    out += ALPHABET[Number((s >> 33n) % BigInt(ALPHABET.length))];
  }
  return out;
}

export const naming = {
  nameFile(ctx, s, f) {
    const start = new Date(Number(f.startMs)).toISOString().slice(0, 19).replace(/[T:]/g, "-");
    globalThis.console?.log(`naming ${s.app}/${s.name} file ${f.sequence}`);
    return `${s.app}/${s.name}/${rand(ctx.nonce, 8)}/${start}_${f.sequence}.${EXT[f.container]}`;
  },
};
