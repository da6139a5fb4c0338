//! Request checking and batch splitting on arbitrary tensors: `check_inputs` refuses or
//! accepts, and `split` of an accepted request's rows never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_serving::batching::rows;
use sluice_types::contract::check_inputs;
use sluice_types::{Dtype, ModelInfo, Tensor, TensorSpec};

fn info() -> ModelInfo {
    let spec = |name: &str, dtype, shape: &[i64]| TensorSpec {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
    };
    ModelInfo {
        name: "fuzz".into(),
        version: "1".into(),
        inputs: vec![
            spec("a", Dtype::Fp32, &[-1, 3]),
            spec("b", Dtype::Bytes, &[-1, -1]),
        ],
        outputs: vec![spec("y", Dtype::Int64, &[-1])],
        max_batch: 64,
    }
}

/// Reads tensors from the fuzzer's bytes: for each, a name choice, a dtype, a rank, the
/// dimensions and a data length, then the data.
fn tensors(mut data: &[u8]) -> Vec<Tensor> {
    let mut take = |n: usize| -> Option<&[u8]> {
        (data.len() >= n).then(|| {
            let (head, tail) = data.split_at(n);
            data = tail;
            head
        })
    };
    let mut out = Vec::new();
    while let Some(header) = take(3) {
        let name = ["a", "b", "c"][header[0] as usize % 3].to_string();
        let dtype = Dtype::ALL[header[1] as usize % Dtype::ALL.len()];
        let rank = header[2] as usize % 4;
        let Some(dims) = take(rank) else { break };
        let shape: Vec<u32> = dims.iter().map(|&d| u32::from(d % 9)).collect();
        let Some(len) = take(1) else { break };
        let Some(bytes) = take(len[0] as usize) else {
            break;
        };
        out.push(Tensor {
            name,
            dtype,
            shape,
            data: bytes.to_vec(),
        });
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let info = info();
    if let Ok((inputs, batch)) = check_inputs(&info, tensors(data)) {
        // Split the accepted request into single rows, as the batcher would split an answer.
        let _ = rows::split(inputs, &vec![1; batch]);
    }
});
