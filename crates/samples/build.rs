//! Build script of the sample models: builds `sample-models/` for wasm32-wasip2 with a nested
//! cargo, so that `sluice serve` can embed them and the tests can load them, with nothing to
//! run first. Only the `sluice` binary and the tests depend on this crate: no library of
//! sluice needs the wasm32 target to build.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The components `sample-models/` produces (file stems): the models, the ONNX runners (in the
/// sandbox, and through wasi:nn), the MiniLM embedder, and for
/// the load-refusal tests `wasi_hello` (not a model) and `unknown_import` (imports what the
/// host does not provide).
const SAMPLE_COMPONENTS: &[&str] = &[
    "digits_cnn",
    "digits_logreg",
    "digits_mlp",
    "faulty",
    "fixed_cost",
    "graph_runner",
    "minilm",
    "onnx_runner",
    "unknown_import",
    "wasi_hello",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    build_sample_models(&manifest_dir, &out_dir);
}

/// The target the guests build for.
const WASM_TARGET: &str = "wasm32-wasip2";

/// Makes sure the toolchain that builds the guests (the one rust-toolchain.toml pins, as seen
/// from `dir`) has the wasm target: rustup adds a toolchain file's targets only when it installs
/// the toolchain itself, so a machine whose Rust was there already lacks it. Adds it through
/// rustup, or fails at once with the command to run when there is no rustup.
fn ensure_wasm_target(dir: &Path) {
    let rustup = |args: &[&str]| {
        Command::new("rustup")
            .args(args)
            .current_dir(dir)
            .env_remove("RUSTUP_TOOLCHAIN")
            .output()
    };
    let installed = match rustup(&["target", "list", "--installed"]) {
        Ok(output) if output.status.success() => output.stdout,
        _ => {
            // No rustup: the target may come from elsewhere (a distribution's rust-std), in
            // the sysroot of the rustc on PATH.
            let sysroot = Command::new("rustc")
                .args(["--print", "sysroot"])
                .output()
                .ok()
                .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
            let has_target =
                sysroot.is_some_and(|root| root.join("lib/rustlib").join(WASM_TARGET).exists());
            if !has_target {
                panic!(
                    "the sample models need the {WASM_TARGET} target, and there is no rustup to \
                     add it: install Rust with rustup and run `rustup target add {WASM_TARGET}`, \
                     or install your distribution's rust-std for {WASM_TARGET}"
                );
            }
            return;
        }
    };
    if String::from_utf8_lossy(&installed)
        .lines()
        .any(|line| line.trim() == WASM_TARGET)
    {
        return;
    }
    println!("cargo:warning=adding the {WASM_TARGET} target (rustup target add {WASM_TARGET})");
    match rustup(&["target", "add", WASM_TARGET]) {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "the sample models need the {WASM_TARGET} target, and `rustup target add \
             {WASM_TARGET}` failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(e) => panic!("running `rustup target add {WASM_TARGET}`: {e}"),
    }
}

/// Runs `cargo build --release` in `sample-models/` and copies each component to `OUT_DIR`.
fn build_sample_models(manifest_dir: &Path, out_dir: &Path) {
    let repo = manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("crates/samples sits two levels below the repository root");
    for watched in ["sample-models", "guest-sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", repo.join(watched).display());
    }
    // Share one target directory across profiles (check, test, release) so the guests build
    // once; it sits beside the host's own target directory.
    let target_root = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target"));
    let wasm_target_dir = target_root.join("sample-models");
    ensure_wasm_target(&repo.join("sample-models"));
    // The guests build with the toolchain pinned in rust-toolchain.toml, which has the
    // wasm32-wasip2 target, whatever toolchain builds the host (nightly, for fuzzing): through
    // the `cargo` on PATH (rustup's proxy), without the outer build's toolchain choice.
    let output = Command::new("cargo")
        .current_dir(repo.join("sample-models"))
        .args(["build", "--release", "--target", WASM_TARGET])
        .env("CARGO_TARGET_DIR", &wasm_target_dir)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        // What the outer cargo sets for the host must not leak into the guest build.
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("running cargo to build the sample models");
    if !output.status.success() {
        panic!(
            "building the sample models failed (is the {WASM_TARGET} target installed? \
             `rustup target add {WASM_TARGET}`):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let built = wasm_target_dir.join(WASM_TARGET).join("release");
    for component in SAMPLE_COMPONENTS {
        let file = format!("{component}.wasm");
        std::fs::copy(built.join(&file), out_dir.join(&file))
            .unwrap_or_else(|e| panic!("copying {file}: {e}"));
    }
    println!(
        "cargo:rustc-env=SLUICE_SAMPLE_WASM_DIR={}",
        out_dir.display()
    );
}
