//! JSON request tensors (the CLI's and the REST API's inputs): any text either parses into
//! tensors that convert back, or is refused with an error; it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(tensors) = sluice::frontend::json::parse_inputs(text) {
        for tensor in &tensors {
            let _ = sluice::frontend::json::decode(tensor);
        }
    }
});
