//! Joining the requests of a batch into one tensor per input, and splitting the model's
//! outputs back into each request's rows. Requests are joined along the batch dimension in
//! queue order; each caller gets exactly its own rows, in order.

use sluice_types::{Dtype, Tensor};

/// Whether two requests' inputs can share a batch: same dimensions apart from the batch.
pub fn compatible(a: &[Tensor], b: &[Tensor]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.name == y.name && x.dtype == y.dtype && x.shape.get(1..) == y.shape.get(1..)
        })
}

/// Joins requests (each a list of inputs in the same declared order) along `shape[0]`.
pub fn concat(mut requests: Vec<Vec<Tensor>>) -> Vec<Tensor> {
    if requests.len() == 1 {
        return requests.pop().unwrap_or_default();
    }
    let mut joined: Vec<Tensor> = Vec::new();
    for request in requests {
        if joined.is_empty() {
            joined = request;
            continue;
        }
        for (into, t) in joined.iter_mut().zip(request) {
            into.shape[0] += t.shape[0];
            into.data.extend_from_slice(&t.data);
        }
    }
    joined
}

/// Byte offset of each row boundary of `t` (`rows + 1` entries).
fn row_offsets(t: &Tensor) -> Result<Vec<usize>, String> {
    let rows = *t.shape.first().ok_or("output has no batch dimension")? as usize;
    let per_row: usize = t.shape[1..].iter().map(|&d| d as usize).product();
    match t.dtype.element_size() {
        Some(size) => Ok((0..=rows).map(|r| r * per_row * size).collect()),
        None => {
            debug_assert_eq!(t.dtype, Dtype::Bytes);
            let mut offsets = vec![0];
            let mut pos = 0;
            for _ in 0..rows {
                for _ in 0..per_row {
                    let len = t
                        .data
                        .get(pos..pos + 4)
                        .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as usize)
                        .ok_or_else(|| format!("output `{}`: truncated BYTES element", t.name))?;
                    pos += 4 + len;
                }
                offsets.push(pos);
            }
            Ok(offsets)
        }
    }
}

/// Splits `outputs` (already checked to have `sum(rows)` rows each) into one list per request.
pub fn split(outputs: Vec<Tensor>, rows: &[usize]) -> Result<Vec<Vec<Tensor>>, String> {
    if rows.len() == 1 {
        return Ok(vec![outputs]);
    }
    let mut per_request: Vec<Vec<Tensor>> = rows
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for t in outputs {
        let offsets = row_offsets(&t)?;
        let mut first_row = 0;
        for (request, &n) in per_request.iter_mut().zip(rows) {
            let (start, end) = (offsets[first_row], offsets[first_row + n]);
            let mut shape = t.shape.clone();
            shape[0] = n as u32;
            request.push(Tensor {
                name: t.name.clone(),
                dtype: t.dtype,
                shape,
                data: t.data[start..end].to_vec(),
            });
            first_row += n;
        }
    }
    Ok(per_request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(name: &str, rows: u32, values: &[f32]) -> Tensor {
        let width = values.len() as u32 / rows;
        Tensor {
            name: name.into(),
            dtype: Dtype::Fp32,
            shape: vec![rows, width],
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn strings(name: &str, items: &[&str]) -> Tensor {
        Tensor {
            name: name.into(),
            dtype: Dtype::Bytes,
            shape: vec![items.len() as u32],
            data: items
                .iter()
                .flat_map(|s| (s.len() as u32).to_le_bytes().into_iter().chain(s.bytes()))
                .collect(),
        }
    }

    #[test]
    fn concat_then_split_gives_each_request_its_own_rows() {
        let a = vec![f32s("x", 1, &[1.0, 2.0]), strings("s", &["a"])];
        let b = vec![
            f32s("x", 2, &[3.0, 4.0, 5.0, 6.0]),
            strings("s", &["bb", ""]),
        ];
        let c = vec![f32s("x", 1, &[7.0, 8.0]), strings("s", &["ccc"])];
        assert!(compatible(&a, &b) && compatible(&a, &c));
        let joined = concat(vec![a.clone(), b.clone(), c.clone()]);
        assert_eq!(joined[0].shape, [4, 2]);
        assert_eq!(joined[1].shape, [4]);
        let back = split(joined, &[1, 2, 1]).unwrap();
        assert_eq!(back, vec![a, b, c]);
    }

    #[test]
    fn different_inner_dimensions_do_not_share_a_batch() {
        let a = vec![f32s("x", 1, &[1.0, 2.0])];
        let b = vec![f32s("x", 1, &[1.0, 2.0, 3.0])];
        assert!(!compatible(&a, &b));
    }

    #[test]
    fn split_reports_truncated_bytes() {
        let mut t = strings("s", &["abc", "d"]);
        t.data.truncate(5);
        assert!(split(vec![t], &[1, 1]).unwrap_err().contains("truncated"));
    }
}
