//! Component loading: any bytes are either a component the runtime compiles and checks, or
//! are refused with a `LoadError`; loading never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_runtime::{Runtime, RuntimeConfig};
use std::sync::LazyLock;

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    Runtime::new(RuntimeConfig {
        cache_dir: None,
        ..RuntimeConfig::default()
    })
    .expect("runtime")
});

fuzz_target!(|bytes: &[u8]| {
    let _ = RUNTIME.load_component(bytes);
});
