//! JSON request tensors (the CLI's and the REST API's inputs): any text either parses into
//! tensors that convert back, or is refused with an error; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_api::kserve_json::{JsonTensor, parse_inputs};

fuzz_target!(|text: &str| {
    if let Ok(tensors) = parse_inputs(text) {
        for tensor in &tensors {
            let _ = JsonTensor::from_tensor(tensor);
        }
    }
});
