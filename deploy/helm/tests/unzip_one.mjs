// Extracts one file from a zip archive (no unzip needed on the machine):
//   node unzip_one.mjs <archive.zip> <entry name> <output file>
// Reads the central directory, inflates the entry, writes it mode 0755.
import fs from "node:fs";
import zlib from "node:zlib";

const [archive, entry, output] = process.argv.slice(2);
if (!archive || !entry || !output) {
  console.error("usage: unzip_one.mjs <archive.zip> <entry> <output>");
  process.exit(2);
}
const zip = fs.readFileSync(archive);
// End of central directory: signature 0x06054b50 within the last 64 KiB.
let eocd = -1;
for (let i = zip.length - 22; i >= Math.max(0, zip.length - 65557); i--) {
  if (zip.readUInt32LE(i) === 0x06054b50) { eocd = i; break; }
}
if (eocd < 0) throw new Error(`${archive}: not a zip archive`);
const count = zip.readUInt16LE(eocd + 10);
let p = zip.readUInt32LE(eocd + 16);
for (let n = 0; n < count; n++) {
  if (zip.readUInt32LE(p) !== 0x02014b50) throw new Error(`${archive}: bad central directory`);
  const method = zip.readUInt16LE(p + 10);
  const compressed = zip.readUInt32LE(p + 20);
  const nameLen = zip.readUInt16LE(p + 28);
  const extraLen = zip.readUInt16LE(p + 30);
  const commentLen = zip.readUInt16LE(p + 32);
  const local = zip.readUInt32LE(p + 42);
  const name = zip.toString("utf8", p + 46, p + 46 + nameLen);
  if (name === entry) {
    const start = local + 30 + zip.readUInt16LE(local + 26) + zip.readUInt16LE(local + 28);
    const data = zip.subarray(start, start + compressed);
    let out;
    if (method === 0) out = data;
    else if (method === 8) out = zlib.inflateRawSync(data);
    else throw new Error(`${entry}: compression method ${method} not supported`);
    fs.writeFileSync(`${output}.tmp`, out, { mode: 0o755 });
    fs.renameSync(`${output}.tmp`, output);
    process.exit(0);
  }
  p += 46 + nameLen + extraLen + commentLen;
}
throw new Error(`${archive}: no entry ${entry}`);
