//! A model author's commands: `sluice new` writes a model project from a template (Rust,
//! Rust around a `wasi:nn` graph, an ONNX export, Python) that builds and serves outside this
//! repository, and `sluice build` builds a Rust or Python one with the right tools, target
//! and flags, explaining the mistakes that would otherwise build "successfully" into nothing
//! servable (no `cdylib`, no `export_model!`, no `Predictor`). The templates' files are in
//! `templates/`, embedded in the binary.

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
    #[arg(long, value_enum, default_value = "rust")]
    template: Template,
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
    /// The model project: a Rust one (its Cargo.toml's directory) or a Python one (app.py
    /// and wit/).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Build again whenever the project's sources change.
    #[arg(long)]
    watch: bool,
    /// Copy the component here too (e.g. `repository/NAME/1/model.wasm`).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// What `sluice new` starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Template {
    /// A model in Rust (y = a·x + b), with a native unit test.
    Rust,
    /// Rust around an ONNX graph the host runs natively through `wasi:nn`.
    RustWasiNn,
    /// No guest code: a scikit-learn model exported to ONNX, served by a bundled runner.
    Onnx,
    /// A model in Python, built with componentize-py.
    Python,
}

/// A file of a template, its text before `NAME` is replaced.
struct TemplateFile {
    path: &'static str,
    contents: &'static [u8],
}

/// `include_bytes!` of a template file, under the path it gets in the new project.
macro_rules! template_file {
    ($path:literal, $source:literal) => {
        TemplateFile {
            path: $path,
            contents: include_bytes!($source),
        }
    };
}

/// sluice's WIT world, which a Python model is built against (Rust models get it from the SDK).
const WIT_FILES: [TemplateFile; 5] = [
    template_file!("wit/world.wit", "../../wit/world.wit"),
    template_file!("wit/types.wit", "../../wit/types.wit"),
    template_file!("wit/compute.wit", "../../wit/compute.wit"),
    template_file!("wit/predictor.wit", "../../wit/predictor.wit"),
    template_file!(
        "wit/deps/wasi-nn/wasi-nn.wit",
        "../../wit/deps/wasi-nn/wasi-nn.wit"
    ),
];

/// One 8x8 digit as a KServe JSON request (`sluice predict NAME --input-file input.json`).
const DIGIT_REQUEST: TemplateFile =
    template_file!("input.json", "../../docs/examples/digit-0.json");

impl Template {
    /// The files of the template, apart from a Rust project's `Cargo.toml` and the WIT.
    fn files(self) -> Vec<TemplateFile> {
        match self {
            Template::Rust => vec![
                template_file!("src/lib.rs", "templates/rust/src/lib.rs"),
                TemplateFile {
                    path: "model.cfg",
                    contents: b"2,1\n",
                },
                TemplateFile {
                    path: ".gitignore",
                    contents: b"/target\n",
                },
            ],
            Template::RustWasiNn => vec![
                template_file!("src/lib.rs", "templates/rust-wasi-nn/src/lib.rs"),
                template_file!(
                    "repository/NAME/1/config.toml",
                    "templates/rust-wasi-nn/config.toml"
                ),
                // The graph: the scikit-learn digits pipeline the `onnx` template exports.
                template_file!(
                    "repository/NAME/1/classifier.onnx",
                    "../../sample-models/onnx/digits-sklearn.onnx"
                ),
                DIGIT_REQUEST,
                TemplateFile {
                    path: ".gitignore",
                    contents: b"/target\n/repository/*/*/model.wasm\n",
                },
            ],
            Template::Onnx => vec![
                template_file!("export.py", "templates/onnx/export.py"),
                template_file!("requirements.txt", "templates/onnx/requirements.txt"),
                DIGIT_REQUEST,
                TemplateFile {
                    path: ".gitignore",
                    contents: b"/.venv\n/*.onnx\n",
                },
            ],
            Template::Python => vec![
                template_file!("app.py", "templates/python/app.py"),
                template_file!("model.py", "templates/python/model.py"),
                template_file!("test_model.py", "templates/python/test_model.py"),
                template_file!("requirements.txt", "templates/python/requirements.txt"),
                TemplateFile {
                    path: "model.cfg",
                    contents: b"2,1\n",
                },
                TemplateFile {
                    path: ".gitignore",
                    contents: b"/.venv\n/*.wasm\n__pycache__/\n",
                },
            ],
        }
    }

    /// Whether the project depends on the Rust SDK.
    fn is_rust(self) -> bool {
        matches!(self, Template::Rust | Template::RustWasiNn)
    }

    /// What to run next in the new project (`dir`, the model `name`).
    fn next_steps(self, dir: &Path, name: &str) -> String {
        let dir = dir.display();
        let lib = name.replace('-', "_");
        match self {
            Template::Rust => format!(
                "  cd {dir}\n  cargo test          # the model, natively\n  sluice build        # \
                 the component\n  sluice load target/{WASM_TARGET}/release/{lib}.wasm --config \
                 model.cfg   # on a running `sluice serve`"
            ),
            Template::RustWasiNn => format!(
                "  cd {dir}\n  cargo test          # the code around the graph, natively\n  sluice \
                 build --out repository/{name}/1/model.wasm\n  sluice serve --repository \
                 repository --onnxruntime PATH/TO/libonnxruntime.so   # in another terminal\n  \
                 sluice predict {name} --input-file input.json"
            ),
            Template::Onnx => format!(
                "  cd {dir}\n  python3 -m venv .venv && .venv/bin/pip install -r requirements.txt\n  \
                 .venv/bin/python export.py   # trains, checks and writes {name}.onnx\n  sluice \
                 load --onnx {name}.onnx       # on a running `sluice serve`\n  sluice predict \
                 {name} --input-file input.json"
            ),
            Template::Python => format!(
                "  cd {dir}\n  python3 -m venv .venv && .venv/bin/pip install -r requirements.txt\n  \
                 python3 -m unittest   # the model, natively\n  sluice build          # \
                 {name}.wasm, with componentize-py\n  sluice load {name}.wasm --config model.cfg   \
                 # on a running `sluice serve`"
            ),
        }
    }
}

/// `sluice new`.
pub(super) fn new(args: NewArgs) -> Result<()> {
    let NewArgs {
        dir,
        template,
        sdk,
        sdk_git,
    } = args;
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
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    if template.is_rust() {
        files.push((
            "Cargo.toml".into(),
            rust_manifest(&name, sdk, sdk_git)?.into(),
        ));
    } else if sdk.is_some() || sdk_git.is_some() {
        bail!("--sdk and --sdk-git are for the Rust templates: this one has no Rust SDK");
    }
    if template == Template::Python {
        files.extend(WIT_FILES.iter().map(|f| (f.path.into(), f.contents.into())));
    }
    for file in template.files() {
        let contents = match std::str::from_utf8(file.contents) {
            // Text: the placeholder becomes the model's name (in paths too). A graph is data.
            Ok(text) if !file.path.ends_with(".onnx") => text.replace("NAME", &name).into(),
            _ => file.contents.to_vec(),
        };
        files.push((file.path.replace("NAME", &name), contents));
    }
    for (path, contents) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "created {} (model `{name}`). Next:\n{}",
        dir.display(),
        template.next_steps(&dir, &name)
    );
    Ok(())
}

/// A Rust model project's `Cargo.toml`, with the SDK from `sdk` (a path), `sdk_git` (a URL)
/// or this checkout.
fn rust_manifest(name: &str, sdk: Option<PathBuf>, sdk_git: Option<String>) -> Result<String> {
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
    Ok(format!(
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
    ))
}

/// `sluice build`.
pub(super) fn build(args: BuildArgs) -> Result<()> {
    let project = Project::in_dir(&args.dir)?;
    let build = || -> Result<()> {
        let wasm = project.build()?;
        let bytes = std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
        project.check_component(&wasm, &bytes)?;
        let shown = match &args.out {
            Some(out) => {
                if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                std::fs::copy(&wasm, out)
                    .with_context(|| format!("copying {} to {}", wasm.display(), out.display()))?;
                out.clone()
            }
            None => wasm,
        };
        println!(
            "built {} ({} KiB); load it with `sluice load {} --config CONFIG`",
            shown.display(),
            bytes.len() / 1024,
            shown.display()
        );
        Ok(())
    };
    if !args.watch {
        return build();
    }
    let mut built_at = None;
    loop {
        let changed = project.newest_change();
        if built_at.is_none_or(|at| changed > at) {
            built_at = Some(changed);
            if let Err(e) = build() {
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

/// A model project `sluice build` can build, told apart by its files.
enum Project {
    /// A Cargo package (`Cargo.toml`).
    Rust { dir: PathBuf },
    /// componentize-py's layout: `app.py` against the WIT in `wit/`; the component is named
    /// after the directory.
    Python { dir: PathBuf, name: String },
}

impl Project {
    fn in_dir(dir: &Path) -> Result<Project> {
        if dir.join("Cargo.toml").exists() {
            return Ok(Project::Rust {
                dir: dir.to_path_buf(),
            });
        }
        if dir.join("app.py").exists() {
            if !dir.join("wit").is_dir() {
                bail!(
                    "{}: a Python model is built against sluice's WIT, which is not in wit/ \
                     (`sluice new NAME --template python` writes it)",
                    dir.display()
                );
            }
            let name = std::path::absolute(dir)?
                .file_name()
                .and_then(|n| n.to_str())
                .context("the project's directory has no name")?
                .to_string();
            return Ok(Project::Python {
                dir: dir.to_path_buf(),
                name,
            });
        }
        if dir.join("export.py").exists() {
            bail!(
                "{}: an ONNX project is not built into a component: run `.venv/bin/python \
                 export.py`, then serve the graph with `sluice load --onnx FILE.onnx`",
                dir.display()
            );
        }
        bail!(
            "{} has no Cargo.toml (a Rust model) or app.py (a Python model): run `sluice build` \
             in a model project (`sluice new NAME` makes one)",
            dir.display()
        )
    }

    /// Builds the component; returns where it is.
    fn build(&self) -> Result<PathBuf> {
        match self {
            Project::Rust { dir } => build_rust(dir),
            Project::Python { dir, name } => build_python(dir, name),
        }
    }

    /// Checks that `bytes` (built at `wasm`) is a model component, saying what is missing
    /// in this kind of project if it is not.
    fn check_component(&self, wasm: &Path, bytes: &[u8]) -> Result<()> {
        let runtime = Runtime::new(RuntimeConfig::default())?;
        match runtime.load_component(bytes) {
            Ok(_) => Ok(()),
            Err(LoadError::MissingPredictor { detail, .. }) => {
                let remedy = match self {
                    Project::Rust { .. } => {
                        "end src/lib.rs with `sluice_sdk::export_model!(YourModel);`"
                    }
                    Project::Python { .. } => {
                        "define `class Predictor(exports.Predictor)` in app.py"
                    }
                };
                bail!(
                    "{} is a component but not a model ({detail}): {remedy}",
                    wasm.display()
                )
            }
            Err(other) => Err(other).context(format!("checking {}", wasm.display())),
        }
    }

    /// The latest modification time of the project's sources.
    fn newest_change(&self) -> SystemTime {
        let mut newest = SystemTime::UNIX_EPOCH;
        match self {
            Project::Rust { dir } => {
                newest_under(&dir.join("Cargo.toml"), &mut newest);
                newest_under(&dir.join("src"), &mut newest);
            }
            Project::Python { dir, .. } => {
                newest_under(&dir.join("wit"), &mut newest);
                for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                    if entry.path().extension().is_some_and(|e| e == "py") {
                        newest_under(&entry.path(), &mut newest);
                    }
                }
            }
        }
        newest
    }
}

/// Raises `newest` to the modification time of `path` and of everything under it.
fn newest_under(path: &Path, newest: &mut SystemTime) {
    if let Ok(meta) = std::fs::metadata(path) {
        if let Ok(modified) = meta.modified() {
            *newest = (*newest).max(modified);
        }
        if meta.is_dir()
            && let Ok(entries) = std::fs::read_dir(path)
        {
            entries
                .flatten()
                .for_each(|e| newest_under(&e.path(), newest));
        }
    }
}

/// Builds the Cargo package in `dir` for [`WASM_TARGET`]; returns the `.wasm`.
fn build_rust(dir: &Path) -> Result<PathBuf> {
    let manifest_path = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
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
    let wasm = target_dir(dir)?
        .join(WASM_TARGET)
        .join("release")
        .join(format!("{lib_name}.wasm"));
    if !wasm.exists() {
        bail!("cargo built no {}", wasm.display());
    }
    Ok(wasm)
}

/// The componentize-py release the Python template pins (its `requirements.txt`).
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// Builds `dir/app.py` with componentize-py (the project's `.venv`, else `PATH`) into
/// `dir/NAME.wasm`.
fn build_python(dir: &Path, name: &str) -> Result<PathBuf> {
    let in_venv = dir.join(".venv/bin/componentize-py");
    let program = if in_venv.exists() {
        in_venv
    } else {
        PathBuf::from("componentize-py")
    };
    let wasm = dir.join(format!("{name}.wasm"));
    let status = Command::new(&program)
        .args(["-d", "wit", "-w", "model", "componentize", "app", "-p", "."])
        .arg("-o")
        .arg(format!("{name}.wasm"))
        .current_dir(dir)
        .status();
    match status {
        Ok(status) if status.success() => Ok(wasm),
        Ok(_) => bail!("componentize-py failed (its errors are above)"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "componentize-py is not installed: in {}, run `python3 -m venv .venv && \
             .venv/bin/pip install {COMPONENTIZE_PY}` (the template's requirements.txt)",
            dir.display()
        ),
        Err(e) => Err(e).context(format!("running {}", program.display())),
    }
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
