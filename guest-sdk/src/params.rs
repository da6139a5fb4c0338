//! A small, self-describing format for a model's trained parameters: a list of named fp32
//! tensors. The sample models' trainer writes it and their `init` reads it; any model may use
//! its own format instead, since the host passes the config bytes through untouched.
//!
//! Layout (all integers u32 little-endian): the magic `SLPM`, the tensor count, then per tensor
//! its name length, the name (UTF-8), its rank, each dimension, and `product(dims)` fp32 values.

use crate::ModelError;

const MAGIC: &[u8; 4] = b"SLPM";

/// One named parameter tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// The parameter's name, e.g. `w1`.
    pub name: String,
    /// Its shape, outermost first.
    pub shape: Vec<u32>,
    /// Its values, row-major.
    pub values: Vec<f32>,
}

/// Encodes parameters in the format [`decode`] reads.
pub fn encode(params: &[Param]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    let put = |v: u32, out: &mut Vec<u8>| out.extend_from_slice(&v.to_le_bytes());
    put(params.len() as u32, &mut out);
    for p in params {
        put(p.name.len() as u32, &mut out);
        out.extend_from_slice(p.name.as_bytes());
        put(p.shape.len() as u32, &mut out);
        for &d in &p.shape {
            put(d, &mut out);
        }
        for v in &p.values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// Decodes parameters written by [`encode`]; a truncated or malformed config is a
/// [`ModelError::Internal`] saying where it went wrong.
pub fn decode(bytes: &[u8]) -> Result<Vec<Param>, ModelError> {
    let mut reader = Reader { bytes, pos: 0 };
    if reader.take(4)? != MAGIC {
        return Err(bad("config does not start with the SLPM magic"));
    }
    let count = reader.u32()?;
    let mut params = Vec::new();
    for _ in 0..count {
        let name_len = reader.u32()? as usize;
        let name = String::from_utf8(reader.take(name_len)?.to_vec())
            .map_err(|_| bad("parameter name is not UTF-8"))?;
        let rank = reader.u32()? as usize;
        let shape = (0..rank)
            .map(|_| reader.u32())
            .collect::<Result<Vec<_>, _>>()?;
        let len = shape.iter().map(|&d| d as usize).product::<usize>();
        let raw = reader.take(len.checked_mul(4).ok_or_else(|| bad("shape overflows"))?)?;
        let values = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        params.push(Param {
            name,
            shape,
            values,
        });
    }
    if reader.pos != bytes.len() {
        return Err(bad("trailing bytes after the last parameter"));
    }
    Ok(params)
}

/// Removes the parameter `name` from `params` and checks its shape.
pub fn take(params: &mut Vec<Param>, name: &str, shape: &[u32]) -> Result<Param, ModelError> {
    let index = params
        .iter()
        .position(|p| p.name == name)
        .ok_or_else(|| bad(&format!("parameter `{name}` is missing")))?;
    let param = params.swap_remove(index);
    if param.shape != shape {
        return Err(bad(&format!(
            "parameter `{name}` has shape {:?}, expected {shape:?}",
            param.shape
        )));
    }
    Ok(param)
}

fn bad(msg: &str) -> ModelError {
    ModelError::Internal(format!("invalid parameters: {msg}"))
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ModelError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| bad(&format!("truncated at byte {}", self.pos)))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn u32(&mut self) -> Result<u32, ModelError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Param> {
        vec![
            Param {
                name: "w".into(),
                shape: vec![2, 3],
                values: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            },
            Param {
                name: "b".into(),
                shape: vec![3],
                values: vec![-1.0, 0.5, 0.25],
            },
        ]
    }

    #[test]
    fn encode_then_decode_is_identity() {
        assert_eq!(decode(&encode(&sample())).unwrap(), sample());
    }

    #[test]
    fn take_checks_name_and_shape() {
        let mut params = sample();
        assert!(take(&mut params, "w", &[3, 2]).is_err());
        let mut params = sample();
        assert_eq!(take(&mut params, "b", &[3]).unwrap().values.len(), 3);
        assert!(take(&mut params, "b", &[3]).is_err(), "taken twice");
    }

    #[test]
    fn truncated_config_is_rejected_not_panicking() {
        let bytes = encode(&sample());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
