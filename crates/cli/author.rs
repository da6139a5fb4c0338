//! A model author's commands: `sluice new` writes a model project that builds and serves
//! outside this repository, and `sluice build` builds one for the right target with the right
//! flags, explaining the mistakes that would otherwise build "successfully" into nothing
//! servable (no `cdylib`, no `export_model!`).

use anyhow::{Context, Result, bail};
use sluice_runtime::{LoadError, Runtime, RuntimeConfig};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

/// The target a model is built for.
const WASM_TARGET: &str = "wasm32-wasip2";

/// This checkout's SDK, the default dependency of a new project (when `sluice` runs where it
/// was built).
const SDK_IN_THIS_CHECKOUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/guest-sdk");

/// Flags of `sluice new`.
#[derive(Debug, clap::Args)]
pub(super) struct NewArgs {
    /// The project's directory (created); its last component names the crate.
    dir: PathBuf,
    /// What to start from.
    #[arg(long, default_value = "rust", value_parser = ["rust"])]
    template: String,
    /// The sluice SDK as a path dependency (a checkout's `guest-sdk` directory; default: the
    /// checkout this `sluice` was built from).
    #[arg(long, conflicts_with = "sdk_git")]
    sdk: Option<PathBuf>,
    /// The sluice SDK as a git dependency: the URL of a sluice repository.
    #[arg(long)]
    sdk_git: Option<String>,
}

/// Flags of `sluice build`.
#[derive(Debug, clap::Args)]
pub(super) struct BuildArgs {
    /// The model project (its Cargo.toml's directory).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Build again whenever `src/` or `Cargo.toml` changes.
    #[arg(long)]
    watch: bool,
}

/// The new project's `src/lib.rs`: the model of docs/model-authors.md, with a native test.
const RUST_LIB: &str = r#"//! A sluice model: y = a·x + b for every element; `a` and `b` come from the config ("a,b").

use sluice_sdk::{Dtype, Model, ModelError, ModelInfo, Tensor, TensorSpec};

pub struct Affine {
    a: f32,
    b: f32,
}

impl Model for Affine {
    fn init(config: &[u8]) -> Result<Self, ModelError> {
        let text = std::str::from_utf8(config)
            .map_err(|_| ModelError::Internal("config is not UTF-8".into()))?;
        let (a, b) = text
            .trim()
            .split_once(',')
            .ok_or_else(|| ModelError::Internal(format!("config must be `a,b`, got `{text}`")))?;
        let parse = |s: &str| {
            s.trim()
                .parse::<f32>()
                .map_err(|e| ModelError::Internal(format!("config `{s}`: {e}")))
        };
        Ok(Affine {
            a: parse(a)?,
            b: parse(b)?,
        })
    }

    fn info(&self) -> ModelInfo {
        ModelInfo {
            name: "NAME".into(),
            version: "1".into(),
            // The first dimension is the batch: -1, any number of rows.
            inputs: vec![TensorSpec::new("x", Dtype::Fp32, &[-1, 3])],
            outputs: vec![TensorSpec::new("y", Dtype::Fp32, &[-1, 3])],
            max_batch: 128,
        }
    }

    fn predict(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
        let x = sluice_sdk::input(&inputs, "x")?;
        let y: Vec<f32> = x.to_f32()?.iter().map(|v| self.a * v + self.b).collect();
        Ok(vec![Tensor::from_f32("y", &x.shape, &y)])
    }
}

sluice_sdk::export_model!(Affine);

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs natively: `cargo test`.
    #[test]
    fn y_is_a_x_plus_b() {
        let mut model = Affine::init(b"2,1").unwrap();
        let x = Tensor::from_f32("x", &[1, 3], &[1.0, 2.0, 3.0]);
        let y = model.predict(vec![x]).unwrap();
        assert_eq!(y[0].to_f32().unwrap(), [3.0, 5.0, 7.0]);
    }
}
"#;

/// `sluice new`.
pub(super) fn new(args: NewArgs) -> Result<()> {
    let NewArgs {
        dir,
        template,
        sdk,
        sdk_git,
    } = args;
    debug_assert_eq!(template, "rust");
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .with_context(|| {
            format!(
                "{}: the directory's name is the crate's and the model's: letters, digits, - and _",
                dir.display()
            )
        })?
        .to_string();
    if dir.exists() {
        bail!("{} exists already; give a new directory", dir.display());
    }
    let dependency = match (sdk, sdk_git) {
        (_, Some(url)) => format!("{{ git = \"{url}\" }}"),
        (Some(path), None) => format!("{{ path = \"{}\" }}", std::path::absolute(&path)?.display()),
        (None, None) if Path::new(SDK_IN_THIS_CHECKOUT).join("Cargo.toml").exists() => {
            format!("{{ path = \"{SDK_IN_THIS_CHECKOUT}\" }}")
        }
        (None, None) => bail!(
            "this sluice was not built from a checkout that is still at {SDK_IN_THIS_CHECKOUT}: \
             give the SDK with --sdk PATH/TO/sluice/guest-sdk or --sdk-git URL"
        ),
    };
    let manifest = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
# cdylib: the component `sluice build` makes; rlib: the same code natively, for `cargo test`.
crate-type = ["cdylib", "rlib"]

[dependencies]
sluice-sdk = {dependency}

[profile.release]
opt-level = 3
lto = true
panic = "abort"
"#
    );
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("creating {}", dir.display()))?;
    let files = [
        ("Cargo.toml", manifest),
        (
            "src/lib.rs",
            RUST_LIB.replace("\"NAME\"", &format!("\"{name}\"")),
        ),
        ("model.cfg", "2,1\n".to_string()),
        (".gitignore", "/target\n".to_string()),
    ];
    for (file, text) in files {
        std::fs::write(dir.join(file), text)
            .with_context(|| format!("writing {}", dir.join(file).display()))?;
    }
    println!(
        "created {dir} (model `{name}`). Next:\n  cd {dir}\n  cargo test          # the model, natively\n  sluice build        # the component\n  sluice load target/{WASM_TARGET}/release/{lib}.wasm --config model.cfg   # on a running `sluice serve`",
        dir = dir.display(),
        lib = name.replace('-', "_"),
    );
    Ok(())
}

/// `sluice build`.
pub(super) fn build(args: BuildArgs) -> Result<()> {
    if !args.watch {
        return build_once(&args.dir).map(drop);
    }
    let mut built_at = None;
    loop {
        let changed = newest_change(&args.dir);
        if built_at.is_none_or(|at| changed > at) {
            built_at = Some(changed);
            if let Err(e) = build_once(&args.dir) {
                eprintln!("error: {e:#}");
            }
            eprintln!(
                "watching {} for changes (Ctrl-C to stop)",
                args.dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The latest modification time of `Cargo.toml` and anything under `src/`.
fn newest_change(dir: &Path) -> SystemTime {
    fn walk(path: &Path, newest: &mut SystemTime) {
        if let Ok(meta) = std::fs::metadata(path) {
            if let Ok(modified) = meta.modified() {
                *newest = (*newest).max(modified);
            }
            if meta.is_dir()
                && let Ok(entries) = std::fs::read_dir(path)
            {
                entries.flatten().for_each(|e| walk(&e.path(), newest));
            }
        }
    }
    let mut newest = SystemTime::UNIX_EPOCH;
    walk(&dir.join("Cargo.toml"), &mut newest);
    walk(&dir.join("src"), &mut newest);
    newest
}

/// Builds the project in `dir` for [`WASM_TARGET`] and checks that the result is a model
/// component; returns its path.
fn build_once(dir: &Path) -> Result<PathBuf> {
    let manifest_path = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest_path).with_context(|| {
        format!(
            "reading {}: run `sluice build` in a model project (`sluice new NAME` makes one)",
            manifest_path.display()
        )
    })?;
    let manifest: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", manifest_path.display()))?;
    let package = manifest
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .with_context(|| format!("{}: no [package] name", manifest_path.display()))?;
    let lib = manifest.get("lib");
    let is_cdylib = lib
        .and_then(|l| l.get("crate-type"))
        .and_then(|t| t.as_array())
        .is_some_and(|types| types.iter().any(|t| t.as_str() == Some("cdylib")));
    if !is_cdylib {
        bail!(
            "{}: [lib] has no crate-type \"cdylib\", so cargo would build no .wasm at all. Add\n\n  \
             [lib]\n  crate-type = [\"cdylib\", \"rlib\"]\n\n(cdylib is the component; rlib keeps \
             `cargo test` running natively)",
            manifest_path.display()
        );
    }
    let lib_name = lib
        .and_then(|l| l.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or(package)
        .replace('-', "_");
    ensure_target()?;
    let status = Command::new("cargo")
        .args(["build", "--release", "--target", WASM_TARGET])
        .current_dir(dir)
        // wasm SIMD roughly halves the cost of arithmetic inside the guest.
        .env(
            "CARGO_TARGET_WASM32_WASIP2_RUSTFLAGS",
            "-C target-feature=+simd128",
        )
        .status()
        .context("running cargo (is Rust installed?)")?;
    if !status.success() {
        bail!("cargo build failed (its errors are above)");
    }
    let target_dir = target_dir(dir)?;
    let wasm = target_dir
        .join(WASM_TARGET)
        .join("release")
        .join(format!("{lib_name}.wasm"));
    let bytes =
        std::fs::read(&wasm).with_context(|| format!("cargo built no {}", wasm.display()))?;
    let runtime = Runtime::new(RuntimeConfig::default())?;
    match runtime.load_component(&bytes) {
        Ok(_) => {}
        Err(LoadError::MissingPredictor { detail, .. }) => bail!(
            "{} is a component but not a model ({detail}): end src/lib.rs with \
             `sluice_sdk::export_model!(YourModel);`",
            wasm.display()
        ),
        Err(other) => return Err(other).context(format!("checking {}", wasm.display())),
    }
    println!(
        "built {} ({} KiB); load it with `sluice load {} --config CONFIG`",
        wasm.display(),
        bytes.len() / 1024,
        wasm.display()
    );
    Ok(wasm)
}

/// Where cargo puts the project's artifacts (`CARGO_TARGET_DIR`, a workspace's, or `target/`).
fn target_dir(dir: &Path) -> Result<PathBuf> {
    let output = Command::new("cargo")
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(dir)
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata gave no target directory")
}

/// Adds the wasm target with rustup if it is missing; without rustup, says what to install.
fn ensure_target() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match installed {
        Ok(out)
            if String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l == WASM_TARGET) =>
        {
            Ok(())
        }
        Ok(_) => {
            eprintln!("adding the {WASM_TARGET} target (rustup target add {WASM_TARGET})");
            let added = Command::new("rustup")
                .args(["target", "add", WASM_TARGET])
                .status()?;
            if !added.success() {
                bail!("`rustup target add {WASM_TARGET}` failed");
            }
            Ok(())
        }
        Err(_) => bail!(
            "models are built for {WASM_TARGET}, and there is no rustup to add it: install Rust \
             with rustup, or your distribution's rust-std for {WASM_TARGET}"
        ),
    }
}
