//! `sluice new`, each template, as an author meets it: a project made in a temporary
//! directory outside this repository, its own test run natively, built with `sluice build` (or
//! exported, for ONNX), served by a real `sluice serve` and asked for a prediction; and the
//! mistakes `sluice build` explains.

use crate::cli::{SLUICE, Server, fresh_dir, stdout};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A directory for projects outside the repository, removed when the test passes.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let root = std::env::temp_dir().join(format!("sluice-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        Scratch(root)
    }

    /// `sluice new NAME --template TEMPLATE` in the scratch directory; the project's path.
    fn new_project(&self, name: &str, template: &str) -> PathBuf {
        ok(
            &run(SLUICE, &["new", name, "--template", template], &self.0),
            "sluice new",
        );
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Where the Rust projects' builds are kept between runs (their dependencies take a while the
/// first time).
fn projects_target() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("new-project-target")
}

/// Runs `program` in `dir`, with Rust projects building into [`projects_target`].
fn run(program: &str, args: &[&str], dir: &Path) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", projects_target())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

fn ok(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `program` in `dir`, which must succeed and print `expected` (on stdout or stderr).
fn runs_and_says(program: &str, args: &[&str], dir: &Path, expected: &str) {
    let output = run(program, args, dir);
    ok(&output, &format!("{program} {}", args.join(" ")));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(printed.contains(expected), "no `{expected}` in:\n{printed}");
}

/// The steps a Python template prints: `python3 -m venv .venv`, then its requirements.
fn install_requirements(project: &Path) {
    ok(
        &run("python3", &["-m", "venv", ".venv"], project),
        "python3 -m venv",
    );
    ok(
        &run(
            ".venv/bin/pip",
            &[
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
                "requirements.txt",
            ],
            project,
        ),
        "pip install -r requirements.txt",
    );
}

/// `sluice predict MODEL --input-file input.json` (the project's own request) on `server`, as
/// JSON.
fn predict_from_file(server: &Server, project: &Path, model: &str) -> serde_json::Value {
    let input = project.join("input.json");
    let answer = server.run(&["predict", model, "--input-file", input.to_str().unwrap()]);
    serde_json::from_str(&stdout(&answer)).unwrap()
}

/// `sluice load WASM --config CONFIG` on `server`, then a prediction of `model`, which must
/// answer y = 2x + 1 (the affine templates with their `model.cfg`).
fn loads_and_answers_y_is_2x_plus_1(server: &Server, wasm: &Path, config: &Path, model: &str) {
    ok(
        &server.run(&[
            "load",
            wasm.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ]),
        "sluice load",
    );
    let answer = server.run(&[
        "predict",
        model,
        "--input",
        r#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1,3],"data":[1,2,3]}]}"#,
    ]);
    let answer: serde_json::Value = serde_json::from_str(&stdout(&answer)).unwrap();
    assert_eq!(output(&answer, "y"), &serde_json::json!([3.0, 5.0, 7.0]));
}

/// The values of output `name` of a KServe JSON answer.
fn output<'a>(answer: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .map(|o| &o["data"])
        .unwrap_or_else(|| panic!("no output `{name}` in {answer}"))
}

/// `sluice new` makes a project outside the repository whose unit test runs natively, which
/// `sluice build` builds and a server serves; and the mistakes that used to build into
/// nothing servable are explained: no `cdylib`, no `export_model!`, a library built for the
/// host; and `sluice build --watch` builds again when the source changes.
#[test]
fn the_rust_template_tests_builds_and_serves_and_its_mistakes_are_explained() {
    let scratch = Scratch::new("new-rust");
    let project = scratch.new_project("my-model", "rust");
    let target = projects_target();
    runs_and_says("cargo", &["test"], &project, "y_is_a_x_plus_b ... ok");
    ok(&run(SLUICE, &["build"], &project), "sluice build");
    let wasm = target.join("wasm32-wasip2/release/my_model.wasm");
    let state = fresh_dir("new-project-state");
    let server = Server::start(&state);
    loads_and_answers_y_is_2x_plus_1(&server, &wasm, &project.join("model.cfg"), "my-model");

    let edit = |file: &str, from: &str, to: &str| {
        let path = project.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} has no `{from}`");
        std::fs::write(&path, text.replace(from, to)).unwrap();
    };
    let refused = |why: &str| {
        let built = run(SLUICE, &["build"], &project);
        let stderr = String::from_utf8_lossy(&built.stderr).into_owned();
        assert!(!built.status.success(), "built despite {why}");
        stderr
    };
    edit("Cargo.toml", r#"["cdylib", "rlib"]"#, r#"["rlib"]"#);
    let stderr = refused("no cdylib");
    assert!(stderr.contains(r#"has no crate-type "cdylib""#), "{stderr}");
    edit("Cargo.toml", r#"["rlib"]"#, r#"["cdylib", "rlib"]"#);
    edit("src/lib.rs", "sluice_sdk::export_model!(Affine);", "");
    let stderr = refused("no export_model!");
    assert!(
        stderr.contains("sluice_sdk::export_model!(YourModel);"),
        "{stderr}"
    );
    edit(
        "src/lib.rs",
        "\n\n#[cfg(test)]",
        "\nsluice_sdk::export_model!(Affine);\n\n#[cfg(test)]",
    );
    // Built for the host, as `cargo build` does without the target.
    ok(
        &run("cargo", &["build", "--release"], &project),
        "cargo build (native)",
    );
    let native = target.join("release/libmy_model.so");
    let load = server.run(&["load", native.to_str().unwrap(), "--name", "native"]);
    assert!(!load.status.success());
    let stderr = String::from_utf8_lossy(&load.stderr);
    assert!(stderr.contains("native shared library"), "{stderr}");
    assert!(stderr.contains("sluice build"), "{stderr}");

    // `--watch` builds at once, then again when the source changes.
    let mut watching = Command::new(SLUICE)
        .args(["build", "--watch"])
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", &target)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines, built) = std::sync::mpsc::channel();
    let stdout_of_watch = BufReader::new(watching.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout_of_watch.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let next_build = || {
        let line = built
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("a build within 2 minutes");
        assert!(line.starts_with("built "), "{line}");
    };
    next_build();
    edit("src/lib.rs", "max_batch: 128", "max_batch: 64");
    next_build();
    let _ = watching.kill();
    let _ = watching.wait();
}

/// The `rust-wasi-nn` template: Rust code around a graph the host runs natively. Its native
/// test covers the code around the graph; `sluice build --out` puts the component into the
/// project's repository beside the graph; a server with ONNX Runtime serves it: the digit is
/// classified, the confidence added, and a pixel out of range is the client's error, named.
#[test]
fn the_wasi_nn_template_serves_its_graph_from_its_repository() {
    let scratch = Scratch::new("new-wasi-nn");
    let project = scratch.new_project("digits-nn", "rust-wasi-nn");
    runs_and_says(
        "cargo",
        &["test"],
        &project,
        "pixels_out_of_range_are_named_and_confidence_is_the_top_probability ... ok",
    );
    ok(
        &run(
            SLUICE,
            &["build", "--out", "repository/digits-nn/1/model.wasm"],
            &project,
        ),
        "sluice build --out",
    );
    let repository = project.join("repository");
    let onnxruntime = crate::support::assets().join("libonnxruntime.so");
    let server = Server::start_with(
        &fresh_dir("new-wasi-nn-state"),
        &[
            "--repository",
            repository.to_str().unwrap(),
            "--onnxruntime",
            onnxruntime.to_str().unwrap(),
        ],
    );
    // The repository loads after the ports open.
    let listed = (0..600)
        .map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            server.run(&["models"])
        })
        .find(|listed| String::from_utf8_lossy(&listed.stdout).contains("digits-nn"));
    assert!(listed.is_some(), "digits-nn was never listed");
    let answer = predict_from_file(&server, &project, "digits-nn");
    assert_eq!(
        output(&answer, "label"),
        &serde_json::json!([0]),
        "{answer}"
    );
    let probabilities: Vec<f64> =
        serde_json::from_value(output(&answer, "probabilities").clone()).expect("probabilities");
    let top = probabilities.iter().copied().fold(0.0, f64::max);
    assert_eq!(output(&answer, "confidence"), &serde_json::json!([top]));

    let mut pixels = vec![0.0; 64];
    pixels[9] = 17.0;
    let request = serde_json::json!({"inputs": [
        {"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": pixels}
    ]});
    let refused = server.run(&["predict", "digits-nn", "--input", &request.to_string()]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("InvalidArgument"), "{stderr}");
    assert!(
        stderr.contains("pixels[0][9] is 17: pixels are 0 to 16"),
        "{stderr}"
    );
}

/// The `onnx` template: no guest code. Its export script trains scikit-learn's digits model,
/// checks the graph against scikit-learn and writes it; `sluice load --onnx` serves it.
#[test]
fn the_onnx_template_exports_a_graph_that_serves() {
    let scratch = Scratch::new("new-onnx");
    let project = scratch.new_project("digits-sk", "onnx");
    install_requirements(&project);
    runs_and_says(
        ".venv/bin/python",
        &["export.py"],
        &project,
        "the graph agrees on all 360 rows",
    );
    let onnxruntime = crate::support::assets().join("libonnxruntime.so");
    let server = Server::start_with(
        &fresh_dir("new-onnx-state"),
        &["--onnxruntime", onnxruntime.to_str().unwrap()],
    );
    let graph = project.join("digits-sk.onnx");
    ok(
        &server.run(&["load", "--onnx", graph.to_str().unwrap()]),
        "sluice load --onnx",
    );
    let answer = predict_from_file(&server, &project, "digits-sk");
    assert_eq!(
        output(&answer, "label"),
        &serde_json::json!([0]),
        "{answer}"
    );
}

/// The `python` template: its logic tested natively with unittest, built by `sluice build`
/// with the componentize-py its requirements pin, served, and answering y = 2x + 1.
#[test]
fn the_python_template_tests_builds_and_serves() {
    let scratch = Scratch::new("new-python");
    let project = scratch.new_project("py-model", "python");
    // Before its requirements are installed (and with none on the PATH), `sluice build`
    // says how to install them.
    let refused = Command::new(SLUICE)
        .arg("build")
        .current_dir(&project)
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("componentize-py is not installed")
            && stderr.contains(".venv/bin/pip install componentize-py==0.25.1"),
        "{stderr}"
    );
    runs_and_says("python3", &["-m", "unittest"], &project, "Ran 2 tests");
    install_requirements(&project);
    ok(&run(SLUICE, &["build"], &project), "sluice build");
    let server = Server::start(&fresh_dir("new-python-state"));
    loads_and_answers_y_is_2x_plus_1(
        &server,
        &project.join("py-model.wasm"),
        &project.join("model.cfg"),
        "py-model",
    );
}

/// `sluice new --sdk-git URL` makes a project whose SDK dependency cargo resolves from that
/// repository: here this checkout, as a `file://` URL (what it has committed).
#[test]
fn a_project_with_the_sdk_as_a_git_dependency_resolves() {
    let scratch = Scratch::new("new-git-sdk");
    let url = format!("file://{}", env!("CARGO_MANIFEST_DIR"));
    ok(
        &run(SLUICE, &["new", "git-model", "--sdk-git", &url], &scratch.0),
        "sluice new --sdk-git",
    );
    let project = scratch.0.join("git-model");
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains(&format!("sluice-sdk = {{ git = \"{url}\" }}")),
        "{manifest}"
    );
    let metadata = run("cargo", &["metadata", "--format-version", "1"], &project);
    let metadata: serde_json::Value = serde_json::from_str(&stdout(&metadata)).unwrap();
    let sdk = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "sluice-sdk")
        .unwrap_or_else(|| panic!("no sluice-sdk among the resolved packages"));
    assert!(
        sdk["source"].as_str().unwrap().starts_with("git+file://"),
        "{}",
        sdk["source"]
    );
}
