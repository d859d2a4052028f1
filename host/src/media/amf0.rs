//! AMF0 values: decoding (RTMP commands, `@setDataFrame`) and encoding (command replies,
//! FLV `onMetaData`). Shared by ingest and the FLV muxer.

use super::MediaError;

/// Deepest nesting of objects/arrays accepted from the network (DoS limit).
pub const MAX_DEPTH: usize = 16;
/// Most properties in one object/array accepted from the network (DoS limit).
pub const MAX_PROPERTIES: usize = 4096;

/// Type marker of a null value.
pub const MARKER_NULL: u8 = 0x05;
/// Type marker of a strict array (a u32 count, then the values).
pub const MARKER_STRICT_ARRAY: u8 = 0x0a;
/// Type marker of a string (a u16 length, then the bytes).
pub const MARKER_STRING: u8 = 0x02;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Number(f64),
    Boolean(bool),
    String(String),
    Object(Vec<(String, Value)>),
    Null,
    Undefined,
    EcmaArray(Vec<(String, Value)>),
    StrictArray(Vec<Value>),
    Date(f64),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }
    /// Property lookup on objects and ECMA arrays.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(p) | Value::EcmaArray(p) => p.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

fn trunc(need: usize, have: usize) -> MediaError {
    MediaError::Truncated { what: "AMF0 value", need, have }
}

/// Decodes every value in `buf`.
pub fn decode_all(mut buf: &[u8]) -> Result<Vec<Value>, MediaError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        out.push(decode(&mut buf)?);
    }
    Ok(out)
}

/// Decodes one value, advancing `buf`.
pub fn decode(buf: &mut &[u8]) -> Result<Value, MediaError> {
    decode_depth(buf, 0)
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], MediaError> {
    if buf.len() < n {
        return Err(trunc(n, buf.len()));
    }
    let (a, b) = buf.split_at(n);
    *buf = b;
    Ok(a)
}

fn read_string(buf: &mut &[u8], long: bool) -> Result<String, MediaError> {
    let len = if long {
        u32::from_be_bytes(take(buf, 4)?.try_into().unwrap_or_default()) as usize
    } else {
        usize::from(u16::from_be_bytes(take(buf, 2)?.try_into().unwrap_or_default()))
    };
    let bytes = take(buf, len)?;
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

fn read_f64(buf: &mut &[u8]) -> Result<f64, MediaError> {
    Ok(f64::from_be_bytes(take(buf, 8)?.try_into().unwrap_or_default()))
}

fn read_props(buf: &mut &[u8], depth: usize) -> Result<Vec<(String, Value)>, MediaError> {
    let mut props = Vec::new();
    loop {
        if buf.len() >= 3 && buf[..3] == [0, 0, 9] {
            *buf = &buf[3..];
            return Ok(props);
        }
        if buf.is_empty() {
            // Some encoders omit the end marker at the end of a message.
            return Ok(props);
        }
        if props.len() >= MAX_PROPERTIES {
            return Err(MediaError::Invalid { what: "AMF0 object", why: "too many properties".into() });
        }
        let key = read_string(buf, false)?;
        let value = decode_depth(buf, depth + 1)?;
        props.push((key, value));
    }
}

fn decode_depth(buf: &mut &[u8], depth: usize) -> Result<Value, MediaError> {
    if depth > MAX_DEPTH {
        return Err(MediaError::Invalid { what: "AMF0 value", why: "nested too deeply".into() });
    }
    let marker = take(buf, 1)?[0];
    Ok(match marker {
        0x00 => Value::Number(read_f64(buf)?),
        0x01 => Value::Boolean(take(buf, 1)?[0] != 0),
        MARKER_STRING => Value::String(read_string(buf, false)?),
        0x03 => Value::Object(read_props(buf, depth)?),
        MARKER_NULL => Value::Null,
        0x06 => Value::Undefined,
        0x08 => {
            take(buf, 4)?; // approximate count, not trusted
            Value::EcmaArray(read_props(buf, depth)?)
        }
        MARKER_STRICT_ARRAY => {
            let n = u32::from_be_bytes(take(buf, 4)?.try_into().unwrap_or_default()) as usize;
            // Every element takes at least one byte: a count beyond what is left is a lie, and
            // what is allocated stays proportional to the input (a long recording's keyframe
            // index holds more entries than any command would).
            if n > buf.len() {
                return Err(MediaError::Invalid { what: "AMF0 strict array", why: format!("{n} elements") });
            }
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(decode_depth(buf, depth + 1)?);
            }
            Value::StrictArray(v)
        }
        0x0b => {
            let d = read_f64(buf)?;
            take(buf, 2)?;
            Value::Date(d)
        }
        0x0c => Value::String(read_string(buf, true)?),
        other => {
            return Err(MediaError::Unsupported(format!("AMF0 marker 0x{other:02x}")));
        }
    })
}

/// Appends the encoding of `v` to `out`.
pub fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Number(n) => {
            out.push(0);
            out.extend_from_slice(&n.to_be_bytes());
        }
        Value::Boolean(b) => out.extend_from_slice(&[1, u8::from(*b)]),
        Value::String(s) => {
            if s.len() > 0xffff {
                out.push(0x0c);
                out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            } else {
                out.push(MARKER_STRING);
                out.extend_from_slice(&(s.len() as u16).to_be_bytes());
            }
            out.extend_from_slice(s.as_bytes());
        }
        Value::Object(p) => {
            out.push(0x03);
            encode_props(p, out);
        }
        Value::Null => out.push(MARKER_NULL),
        Value::Undefined => out.push(0x06),
        Value::EcmaArray(p) => {
            out.push(0x08);
            out.extend_from_slice(&(p.len() as u32).to_be_bytes());
            encode_props(p, out);
        }
        Value::StrictArray(v) => {
            out.push(MARKER_STRICT_ARRAY);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            for e in v {
                encode(e, out);
            }
        }
        Value::Date(d) => {
            out.push(0x0b);
            out.extend_from_slice(&d.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
        }
    }
}

fn encode_props(p: &[(String, Value)], out: &mut Vec<u8>) {
    for (k, v) in p {
        let k = &k.as_bytes()[..k.len().min(0xffff)];
        out.extend_from_slice(&(k.len() as u16).to_be_bytes());
        out.extend_from_slice(k);
        encode(v, out);
    }
    out.extend_from_slice(&[0, 0, 9]);
}

/// Encodes a sequence of values.
pub fn encode_all(values: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        encode(v, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_connect_command() {
        let vals = vec![
            Value::String("connect".into()),
            Value::Number(1.0),
            Value::Object(vec![
                ("app".into(), Value::String("live".into())),
                ("tcUrl".into(), Value::String("rtmp://example.com/live".into())),
                ("fpad".into(), Value::Boolean(false)),
            ]),
            Value::Null,
            Value::EcmaArray(vec![("duration".into(), Value::Number(0.0))]),
            Value::StrictArray(vec![Value::Number(1.0), Value::Undefined]),
        ];
        let bytes = encode_all(&vals);
        assert_eq!(decode_all(&bytes).unwrap(), vals);
    }

    #[test]
    fn rejects_truncation_and_deep_nesting() {
        assert!(decode_all(&[0x00, 1, 2]).is_err());
        assert!(decode_all(&[0x02, 0, 5, b'a']).is_err());
        let mut deep = Vec::new();
        for _ in 0..40 {
            deep.extend_from_slice(&[0x0a, 0, 0, 0, 1]);
        }
        deep.push(0x05);
        assert!(decode_all(&deep).is_err());
    }
}
