// Just enough protobuf for the chat page: messages whose fields are
// strings, nested messages and small integers, wrapped in
// google.protobuf.Any, moved as base64 (the gate's HTTP API format).
"use strict";

const Proto = (() => {
  const TYPE_PREFIX = "type.googleapis.com/";

  function varint(value) {
    const bytes = [];
    while (value > 127) {
      bytes.push((value % 128) | 128);
      value = Math.floor(value / 128);
    }
    bytes.push(value);
    return bytes;
  }

  function concat(parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const part of parts) {
      out.set(part, at);
      at += part.length;
    }
    return out;
  }

  // A length-delimited field (wire type 2): strings, bytes, messages.
  function bytesField(number, bytes) {
    return concat([Uint8Array.from(varint(number * 8 + 2)),
                   Uint8Array.from(varint(bytes.length)), bytes]);
  }

  // Encode {fieldNumber: "text", ...}; empty strings are left out, as proto3 does.
  function encodeStrings(fields) {
    const parts = [];
    for (const [number, text] of Object.entries(fields)) {
      if (text) parts.push(bytesField(Number(number), new TextEncoder().encode(text)));
    }
    return concat(parts);
  }

  // Decode into {fieldNumber: [values]}: numbers for varints, bytes otherwise.
  function decode(bytes) {
    const fields = {};
    let at = 0;
    const readVarint = () => {
      let value = 0, scale = 1, byte;
      do {
        byte = bytes[at++];
        value += (byte & 127) * scale;
        scale *= 128;
      } while (byte & 128);
      return value;
    };
    while (at < bytes.length) {
      const key = readVarint();
      const number = Math.floor(key / 8), wire = key % 8;
      let value;
      if (wire === 0) {
        value = readVarint();
      } else if (wire === 2) {
        const length = readVarint();
        value = bytes.subarray(at, at + length);
        at += length;
      } else if (wire === 1 || wire === 5) {
        at += wire === 1 ? 8 : 4;
        continue;
      } else {
        throw new Error("unsupported protobuf wire type " + wire);
      }
      (fields[number] = fields[number] || []).push(value);
    }
    return fields;
  }

  const text = (bytes) => new TextDecoder().decode(bytes || new Uint8Array());

  function toBase64(bytes) {
    let binary = "";
    for (const b of bytes) binary += String.fromCharCode(b);
    return btoa(binary);
  }

  function fromBase64(data) {
    return Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  }

  // google.protobuf.Any: type_url = 1, value = 2.
  function packAny(typeName, valueBytes) {
    return concat([bytesField(1, new TextEncoder().encode(TYPE_PREFIX + typeName)),
                   bytesField(2, valueBytes)]);
  }

  function unpackAny(bytes) {
    const fields = decode(bytes);
    return {typeUrl: text((fields[1] || [])[0]),
            value: (fields[2] || [])[0] || new Uint8Array()};
  }

  return {encodeStrings, decode, text, toBase64, fromBase64, packAny, unpackAny};
})();
