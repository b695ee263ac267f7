// Redis Cluster's key -> slot mapping (CRC16-XMODEM of the key's hash tag, mod 16384), so the service
// can place queue shards and map sessions to them without asking the cluster.
export const CLUSTER_SLOTS = 16384;

const TABLE = (() => {
  const t = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i << 8;
    for (let k = 0; k < 8; k++) c = c & 0x8000 ? ((c << 1) ^ 0x1021) & 0xffff : (c << 1) & 0xffff;
    t[i] = c;
  }
  return t;
})();

function crc16(bytes: Uint8Array): number {
  let crc = 0;
  for (const b of bytes) crc = ((crc << 8) & 0xffff) ^ TABLE[((crc >> 8) ^ b) & 0xff]!;
  return crc;
}

/** The slot of `key`: only its hash tag (the first non-empty `{...}`) counts when it has one. */
export function keySlot(key: string): number {
  let k = key;
  const open = key.indexOf('{');
  if (open >= 0) {
    const close = key.indexOf('}', open + 1);
    if (close > open + 1) k = key.slice(open + 1, close);
  }
  return crc16(Buffer.from(k, 'utf8')) % CLUSTER_SLOTS;
}
