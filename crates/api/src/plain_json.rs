//! The fast path of a KServe JSON inference request: the plain form a hand-written client or
//! a load generator sends, `{"id": "...", "inputs": [{"name", "datatype", "shape", "data":
//! [numbers]}]}`, read in one pass over the bytes straight into tensors. (Triton's HTTP client
//! adds `parameters` and sends its data in binary by default: serde's path, on a short JSON
//! header.)
//!
//! Through serde, such a request costs about 200 instructions a number (serde_json's
//! per-element calls), most of a REST infer's own cost; no JSON crate measured does better
//! (docs/benchmarks.md, KServe REST). This reader accepts a strict subset of JSON and gives up
//! (`None`) on anything outside it: other keys, escapes in strings, parameters, exponents, more
//! than 18 digits, non-numeric datatypes, `data` before `datatype` or `shape`, a count that is
//! not the shape's. The caller then parses the body with serde (`kserve_json`), which is the
//! reference: for what this path accepts, it gives the same tensors, bit for bit (a test
//! compares the two), and every error message still comes from serde's path.

use sluice_types::{Dtype, Tensor};

/// `10^k` for the exponents a decimal may have here: exact in `f64`, as serde_json's table.
const POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// A plain request: its `id` and its inputs as tensors; `None` when the body is not in the
/// plain form (it may still be a valid request: parse it with serde).
pub fn plain_request(body: &[u8]) -> Option<(Option<String>, Vec<Tensor>)> {
    let mut reader = Reader { text: body, at: 0 };
    let (mut id, mut inputs) = (None, None);
    reader.object(|reader, key| match key {
        "id" if id.is_none() => {
            id = Some(reader.string()?.to_string());
            Some(())
        }
        "inputs" if inputs.is_none() => {
            let mut tensors = Vec::new();
            reader.list(|reader| {
                tensors.push(reader.input()?);
                Some(())
            })?;
            inputs = Some(tensors);
            Some(())
        }
        _ => None,
    })?;
    reader.skip_space();
    (reader.at == body.len()).then_some(())?;
    Some((id, inputs?))
}

/// A JSON number in the forms this path reads.
enum Number {
    Integer(i64),
    /// With a fraction: computed as serde_json computes it (significand / 10^digits).
    Decimal(f64),
}

struct Reader<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// Skips JSON's whitespace (space, tab, line feed, carriage return: no others).
    #[inline]
    fn skip_space(&mut self) {
        while matches!(self.text.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    #[inline]
    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.text.get(self.at).copied()
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// A string with no escapes and no control characters, as UTF-8.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let rest = &self.text[self.at..];
        let length = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        (rest[length] == b'"').then_some(())?;
        self.at += length + 1;
        std::str::from_utf8(&rest[..length]).ok()
    }

    /// `[a, b, ...]`, each element read by `element`.
    fn list(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        let mut more = self.open(b'[', b']')?;
        while more {
            element(self)?;
            more = self.after_element(b']')?;
        }
        Some(())
    }

    /// `{"key": value, ...}`, each value read by `member` (which refuses a key it does not
    /// take, or one it has seen).
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        let mut more = self.open(b'{', b'}')?;
        while more {
            let key = self.string()?;
            self.expect(b':')?;
            member(self, key)?;
            more = self.after_element(b'}')?;
        }
        Some(())
    }

    /// Past an opening bracket: whether an element follows (else past the closing one too).
    fn open(&mut self, open: u8, close: u8) -> Option<bool> {
        self.expect(open)?;
        let empty = self.peek()? == close;
        self.at += usize::from(empty);
        Some(!empty)
    }

    /// Past the comma after an element (`true`: another follows) or the closing bracket.
    fn after_element(&mut self, close: u8) -> Option<bool> {
        let byte = self.peek()?;
        self.at += 1;
        match byte {
            b',' => Some(true),
            _ if byte == close => Some(false),
            _ => None,
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?` with at most 18 digits in all (a decimal's below
    /// 2^53); not `-0`.
    #[inline]
    fn number(&mut self) -> Option<Number> {
        self.skip_space();
        let negative = self.text.get(self.at) == Some(&b'-');
        self.at += usize::from(negative);
        let (mut significand, mut digits) = (0u64, 0usize);
        let mut read_digits = |reader: &mut Self| {
            let start = reader.at;
            while let Some(digit) = reader.text.get(reader.at).map(|b| b.wrapping_sub(b'0')) {
                if digit > 9 {
                    break;
                }
                significand = significand * 10 + u64::from(digit);
                reader.at += 1;
                digits += 1;
                if digits > 18 {
                    return None;
                }
            }
            Some(reader.at - start)
        };
        let whole = read_digits(self)?;
        let leading_zero = whole > 1 && self.text[self.at - whole] == b'0';
        if whole == 0 || leading_zero {
            return None;
        }
        let fraction = match self.text.get(self.at) {
            Some(b'.') => {
                self.at += 1;
                Some(read_digits(self).filter(|&n| n > 0)?)
            }
            Some(b'e' | b'E') => return None,
            _ => None,
        };
        Some(match fraction {
            None if negative && significand == 0 => return None,
            None if negative => Number::Integer(-(significand as i64)),
            None => Number::Integer(significand as i64),
            // Exact operands, one division: correctly rounded, as any JSON parser's result.
            Some(_) if significand >= 1 << 53 => return None,
            Some(places) => {
                let magnitude = significand as f64 / POWERS_OF_TEN[places];
                Number::Decimal(if negative { -magnitude } else { magnitude })
            }
        })
    }

    /// One input: its name, datatype, shape and data, with the datatype and the shape before
    /// the data (as Triton's clients send them).
    fn input(&mut self) -> Option<Tensor> {
        let (mut name, mut dtype, mut shape, mut data) = (None, None, None, None);
        self.object(|reader, key| {
            match key {
                "name" if name.is_none() => name = Some(reader.string()?.to_string()),
                "datatype" if dtype.is_none() => dtype = Some(Dtype::parse(reader.string()?)?),
                "shape" if shape.is_none() => {
                    let mut dims = Vec::new();
                    reader.list(|reader| match reader.number()? {
                        Number::Integer(d) => {
                            dims.push(u32::try_from(d).ok()?);
                            Some(())
                        }
                        Number::Decimal(_) => None,
                    })?;
                    shape = Some(dims);
                }
                "data" if data.is_none() => {
                    data = Some(reader.data(dtype?, shape.as_deref()?)?);
                }
                _ => return None,
            }
            Some(())
        })?;
        Some(Tensor {
            name: name?,
            dtype: dtype?,
            shape: shape?,
            data: data?,
        })
    }

    /// A flat list of exactly as many numbers as `shape` holds, as `dtype`'s little-endian
    /// bytes, converted as the serde path converts them.
    fn data(&mut self, dtype: Dtype, shape: &[u32]) -> Option<Vec<u8>> {
        let expected = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d as usize))?;
        let size = dtype.element_size().filter(|_| dtype != Dtype::Boolean)?;
        // Each element takes at least two bytes of text: the capacity is bounded by the body.
        let capacity = expected.min(self.text.len() / 2 + 1) * size;
        let mut out = Vec::with_capacity(capacity);
        self.list(|reader| {
            let number = reader.number()?;
            match (dtype, number) {
                (Dtype::Fp32, Number::Integer(v)) => {
                    push(&mut out, (v as f64 as f32).to_le_bytes())
                }
                (Dtype::Fp32, Number::Decimal(v)) => push(&mut out, (v as f32).to_le_bytes()),
                (Dtype::Fp64, Number::Integer(v)) => push(&mut out, (v as f64).to_le_bytes()),
                (Dtype::Fp64, Number::Decimal(v)) => push(&mut out, v.to_le_bytes()),
                (Dtype::Int32, Number::Integer(v)) => {
                    push(&mut out, i32::try_from(v).ok()?.to_le_bytes())
                }
                (Dtype::Int64, Number::Integer(v)) => push(&mut out, v.to_le_bytes()),
                (Dtype::Uint8, Number::Integer(v)) => push(&mut out, [u8::try_from(v).ok()?]),
                _ => return None,
            }
            Some(())
        })?;
        (expected.checked_mul(size) == Some(out.len())).then_some(out)
    }
}

fn push<const N: usize>(out: &mut Vec<u8>, bytes: [u8; N]) {
    out.extend_from_slice(&bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kserve_json::parse_inputs;

    /// What serde's path gives for `body`, the reference.
    fn reference(body: &str) -> Vec<Tensor> {
        parse_inputs(body).unwrap_or_else(|e| panic!("{body}: {e}"))
    }

    #[test]
    fn plain_requests_read_as_serde_reads_them() {
        let cases = [
            r#"{"inputs":[{"name":"pixels","datatype":"FP32","shape":[1,4],"data":[0,12,-3,16]}]}"#,
            r#" { "id" : "r-1" , "inputs" : [ { "shape" : [ 2 , 2 ] , "datatype" : "FP64" , "name" : "x" , "data" : [ 0.5 , -1.25 , 3 , 1 ] } ] } "#,
            r#"{"inputs":[{"name":"a","datatype":"INT32","shape":[2],"data":[-2147483648,2147483647]},{"name":"b","datatype":"UINT8","shape":[3],"data":[0,7,255]}]}"#,
            r#"{"inputs":[{"name":"i","datatype":"INT64","shape":[2],"data":[999999999999999999,-1]}]}"#,
            r#"{"inputs":[{"name":"f","datatype":"FP32","shape":[5],"data":[0.1,-0.0,123456.789,0.000001,16.0]}]}"#,
            r#"{"inputs":[{"name":"e","datatype":"FP32","shape":[0],"data":[]}],"id":"x"}"#,
            "{\"inputs\":[{\"name\":\"é\",\"datatype\":\"FP32\",\"shape\":[1],\"data\":[\t1\r\n]}]}",
        ];
        for body in cases {
            let (_, tensors) = plain_request(body.as_bytes())
                .unwrap_or_else(|| panic!("{body} should take the fast path"));
            assert_eq!(tensors, reference(body), "{body}");
        }
        let (id, _) = plain_request(cases[1].as_bytes()).unwrap();
        assert_eq!(id.as_deref(), Some("r-1"));
    }

    /// Numbers of many forms, generated, each datatype: the same bytes as serde's path.
    #[test]
    fn generated_numbers_decode_bit_for_bit() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for dtype in ["FP32", "FP64", "INT32", "INT64", "UINT8"] {
            let float = dtype.starts_with("FP");
            let numbers: Vec<String> = (0..2000)
                .map(|_| {
                    let r = next();
                    let digits = 1 + (r % 17) as u32;
                    let whole = (r >> 8) % 10u64.pow(digits.min(9));
                    let sign = if r & (1 << 40) != 0 && whole != 0 {
                        "-"
                    } else {
                        ""
                    };
                    match (float, (r >> 41) % 3) {
                        (true, 0) => format!(
                            "{sign}{whole}.{}",
                            (r >> 20) % 10u64.pow(1 + (r % 6) as u32)
                        ),
                        (_, _) if dtype == "UINT8" => format!("{}", whole % 256),
                        (_, _) if dtype == "INT32" => format!("{sign}{}", whole % (1 << 31)),
                        _ => format!("{sign}{whole}"),
                    }
                })
                .collect();
            let body = format!(
                r#"{{"inputs":[{{"name":"x","datatype":"{dtype}","shape":[{}],"data":[{}]}}]}}"#,
                numbers.len(),
                numbers.join(",")
            );
            let (_, fast) = plain_request(body.as_bytes())
                .unwrap_or_else(|| panic!("{dtype}: should take the fast path"));
            assert_eq!(fast, reference(&body), "{dtype}");
        }
    }

    /// Everything outside the plain form is left to serde, including what is not JSON.
    #[test]
    fn anything_else_is_left_to_serde() {
        let input = |fields: &str| format!(r#"{{"inputs":[{{{fields}}}]}}"#);
        let plain = r#""name":"x","datatype":"FP32","shape":[2]"#;
        for body in [
            input(&format!(r#"{plain},"data":[1,2e3]"#)),
            input(&format!(r#"{plain},"data":[1,01]"#)),
            input(&format!(r#"{plain},"data":[1,-0]"#)),
            input(&format!(r#"{plain},"data":[1,.5]"#)),
            input(&format!(r#"{plain},"data":[1,5.]"#)),
            input(&format!(r#"{plain},"data":[1,1234567890123456789]"#)),
            input(&format!(r#"{plain},"data":[[1,2]]"#)),
            input(&format!(r#"{plain},"data":[1]"#)),
            input(&format!(r#"{plain},"data":[1,2,]"#)),
            input(&format!(r#"{plain},"data":[1,"2"]"#)),
            input(&format!(r#"{plain},"data":[1,2],"parameters":{{}}"#)),
            input(&format!(r#"{plain},"data":[1,2],"name":"y""#)),
            input(r#""data":[1,2],"name":"x","datatype":"FP32","shape":[2]"#),
            input(r#""name":"x\n","datatype":"FP32","shape":[2],"data":[1,2]"#),
            input(r#""name":"x","datatype":"BOOL","shape":[2],"data":[1,0]"#),
            input(r#""name":"x","datatype":"INT32","shape":[2],"data":[1,2.5]"#),
            input(r#""name":"x","datatype":"UINT8","shape":[2],"data":[1,256]"#),
            input(r#""name":"x","datatype":"FP32","shape":[-2],"data":[1,2]"#),
            format!("{}\u{c}", input(&format!(r#"{plain},"data":[1,2]"#))),
            format!("{} x", input(&format!(r#"{plain},"data":[1,2]"#))),
            input(&format!(r#"{plain},"data":[1,2]"#))
                .replace("{\"inputs\"", "{\"outputs\":[],\"inputs\""),
            input(&format!(r#"{plain},"data":[1,2]"#)).replace('}', ""),
        ] {
            assert!(plain_request(body.as_bytes()).is_none(), "{body}");
        }
        let huge =
            input(r#""name":"x","datatype":"FP32","shape":[4294967295,4294967295],"data":[1]"#);
        assert!(plain_request(huge.as_bytes()).is_none());
    }
}
