//! A plain WASI command: a real component that exports `wasi:cli/run` and not the sluice
//! `predictor`. Loading it must be refused with a message that says what is missing.

fn main() {
    println!("hello from a component that is not a model");
}
