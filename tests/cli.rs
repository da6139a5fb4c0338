//! The `sluice` binary end to end: `serve` on an ephemeral port, then the client commands and
//! `inspect` against it, checking output and exit codes as a user would see them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub(crate) const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// `serve` on ports of the system's choosing, both.
const SERVE_ON_ANY_PORTS: [&str; 5] = [
    "serve",
    "--listen",
    "127.0.0.1:0",
    "--http-listen",
    "127.0.0.1:0",
];

fn sample_wasm(name: &str) -> PathBuf {
    Path::new(sluice_samples::SAMPLE_WASM_DIR).join(format!("{name}.wasm"))
}

pub(crate) fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A `sluice serve` process, stopped with SIGTERM when dropped.
pub(crate) struct Server {
    child: Child,
    /// The gRPC port's URL.
    pub(crate) url: String,
    /// The HTTP port's URL.
    pub(crate) http_url: String,
}

/// An empty directory under the test target folder.
pub(crate) fn fresh_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Server {
    /// Serves the bundled samples, keeping applications and learned state in `state_dir`.
    pub(crate) fn start(state_dir: &Path) -> Server {
        Self::start_with(state_dir, &[])
    }

    /// [`Server::start`] with more flags for `serve`.
    pub(crate) fn start_with(state_dir: &Path, extra: &[&str]) -> Server {
        Self::spawn(Command::new(SLUICE), state_dir, extra)
    }

    /// [`Server::start`] in a process that may open at most `open_files` files (`ulimit -n`,
    /// soft and hard).
    fn start_with_open_files(state_dir: &Path, open_files: u32) -> Server {
        let mut command = Command::new("sh");
        command
            .args([
                "-c",
                &format!("ulimit -n {open_files} && exec \"$0\" \"$@\""),
            ])
            .arg(SLUICE);
        Self::spawn(command, state_dir, &[])
    }

    /// Runs `command` with `serve` and its flags, and waits until it listens.
    pub(crate) fn spawn(mut command: Command, state_dir: &Path, extra: &[&str]) -> Server {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-cache");
        let mut child = command
            .args(SERVE_ON_ANY_PORTS)
            .args(["--sample-replicas", "1"])
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--state-dir")
            .arg(state_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sluice serve");
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        stdout.read_line(&mut line).unwrap();
        let mut http_line = String::new();
        stdout.read_line(&mut http_line).unwrap();
        assert!(http_line.starts_with("http on "), "{http_line:?}");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let scheme = if extra.contains(&"--tls-cert") {
            "https"
        } else {
            "http"
        };
        let http_addr = http_line.trim().trim_start_matches("http on ");
        Server {
            url: format!("{scheme}://{addr}"),
            http_url: format!("{scheme}://{http_addr}"),
            child,
        }
    }

    pub(crate) fn run(&self, args: &[&str]) -> Output {
        Command::new(SLUICE)
            .args(args)
            .env("SLUICE_SERVER", &self.url)
            .output()
            .expect("run sluice")
    }

    /// SIGTERM, then the exit status of the drained server.
    pub(crate) fn stop(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Only matters when a test failed before `stop`; killing an exited child is a no-op.
        let _ = self.child.kill();
    }
}

pub(crate) fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn serve_then_list_predict_load_inspect_unload() {
    let mut server = Server::start(&fresh_dir("cli-state"));

    let models = stdout(&server.run(&["models"]));
    assert!(
        models.contains("digits-logreg") && models.contains("digits-mlp"),
        "{models}"
    );

    // The first row of the data set is a 0.
    let row = std::fs::read_to_string(repo_file("sample-models/data/digits.csv")).unwrap();
    let fields: Vec<&str> = row.lines().next().unwrap().split(',').collect();
    let input = format!(
        r#"{{"inputs": [{{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [{}]}}]}}"#,
        fields[..64].join(",")
    );
    let answer: serde_json::Value = serde_json::from_str(&stdout(&server.run(&[
        "predict",
        "digits-mlp",
        "--input",
        &input,
    ])))
    .unwrap();
    let label = answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "label")
        .unwrap();
    assert_eq!(label["data"][0].as_i64().unwrap().to_string(), fields[64]);

    let unknown = server.run(&["predict", "nope", "--input", &input]);
    assert_eq!(unknown.status.code(), Some(1));
    let message = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        message.contains("NotFound") && message.contains("model `nope` is not loaded"),
        "{message}"
    );

    let config = Path::new(env!("CARGO_TARGET_TMPDIR")).join("panic.cfg");
    std::fs::write(&config, "panic").unwrap();
    let faulty = sample_wasm("faulty");
    let loaded = stdout(&server.run(&[
        "load",
        faulty.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--replicas",
        "2",
    ]));
    assert!(
        loaded.contains("loaded faulty-panic version 1 (2 replicas, batching adaptive(slo 100ms))"),
        "{loaded}"
    );
    let scaled = stdout(&server.run(&["models", "scale", "faulty-panic", "3"]));
    assert!(
        scaled.contains("faulty-panic version 1 now has 3 replicas"),
        "{scaled}"
    );
    let unloaded = stdout(&server.run(&["unload", "faulty-panic"]));
    assert!(
        unloaded.contains("unloaded faulty-panic versions 1"),
        "{unloaded}"
    );

    // A model config file, with a flag on top of it.
    let model_config = Path::new(env!("CARGO_TARGET_TMPDIR")).join("logreg.toml");
    let params = repo_file("sample-models/digits-logreg/params.slpm");
    std::fs::write(
        &model_config,
        format!(
            "replicas = 2\nconfig = {:?}\n[batching]\nmode = \"static\"\nbatch_size = 8\n",
            params.to_str().unwrap()
        ),
    )
    .unwrap();
    let logreg = sample_wasm("digits_logreg");
    let loaded = stdout(&server.run(&[
        "load",
        logreg.to_str().unwrap(),
        "--model-config",
        model_config.to_str().unwrap(),
        "--name",
        "logreg-static",
        "--max-delay-us",
        "200",
    ]));
    assert!(
        loaded.contains("logreg-static version 1 (2 replicas, batching static 8 +delay 200us)"),
        "{loaded}"
    );

    // A short closed-loop benchmark, with its JSON report.
    let report = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench.json");
    let plot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench.svg");
    let bench = stdout(&server.run(&[
        "bench",
        "logreg-static",
        "--concurrency",
        "8",
        "--requests",
        "200",
        "--json",
        report.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]));
    assert!(bench.contains("200 ok of 200 sent"), "{bench}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(report["ok"], 200);
    assert!(report["latency_ms"]["p99"].as_f64().unwrap() > 0.0);
    assert!(report["server"]["mean_batch"].as_f64().unwrap() >= 1.0);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("p99.9") && svg.contains("<polyline"),
        "{svg}"
    );

    assert!(server.stop().success(), "SIGTERM drains and exits 0");
}

#[test]
fn inspect_shows_imports_exports_and_model_info() {
    let mlp = sample_wasm("digits_mlp");
    let params = repo_file("sample-models/digits-mlp/params.slpm");
    let output = Command::new(SLUICE)
        .args([
            "inspect",
            mlp.to_str().unwrap(),
            "--config",
            params.to_str().unwrap(),
        ])
        .env("XDG_CACHE_HOME", env!("CARGO_TARGET_TMPDIR"))
        .output()
        .unwrap();
    let text = stdout(&output);
    assert!(text.contains("sluice:model/compute@0.1.0"), "{text}");
    assert!(text.contains("sluice:model/predictor@0.1.0"), "{text}");
    assert!(text.contains("model: digits-mlp version 1"), "{text}");
    assert!(text.contains("input: pixels FP32 [-1, 64]"), "{text}");

    let not_wasm = Command::new(SLUICE)
        .args(["inspect", params.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(not_wasm.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&not_wasm.stderr).contains("not a WebAssembly component"));
}

/// `sluice inspect --input` predicts once, without a server, and checks the answer against the
/// model's own declarations: a model whose output has the wrong shape is caught before it is
/// ever served.
#[test]
fn inspect_with_an_input_self_checks_the_answer() {
    let faulty = sample_wasm("faulty");
    let dir = fresh_dir("inspect-self-check");
    let inspect = |fault: &str, x: &str| {
        let config = dir.join(format!("{fault}.cfg"));
        std::fs::write(&config, fault).unwrap();
        let input = format!(
            r#"{{"inputs":[{{"name":"x","datatype":"FP32","shape":[2,1],"data":[{x}]}}]}}"#
        );
        Command::new(SLUICE)
            .args(["inspect", faulty.to_str().unwrap(), "--config"])
            .arg(&config)
            .args(["--input", &input])
            .env("XDG_CACHE_HOME", env!("CARGO_TARGET_TMPDIR"))
            .output()
            .unwrap()
    };
    let good = inspect("wrong-shape", "0.5, 2");
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(
        stdout(&good).contains("self-check passed"),
        "{}",
        stdout(&good)
    );
    assert!(
        stdout(&good).contains(r#""data": [0.5,2.0]"#),
        "{}",
        stdout(&good)
    );
    // The value 1.0 makes this model answer one row too many.
    let bad = inspect("wrong-shape", "1, 2");
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("the model's answer breaks its own info()"),
        "{stderr}"
    );
    assert!(
        stderr.contains("batch size 3, but the request had 2"),
        "{stderr}"
    );
}

#[test]
fn init_repo_writes_the_samples_as_a_repository() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("init-repo");
    let _ = std::fs::remove_dir_all(&dir);
    let output = Command::new(SLUICE)
        .args(["init-repo", dir.to_str().unwrap(), "--replicas", "3"])
        .output()
        .unwrap();
    assert!(stdout(&output).contains("sluice serve --repository"));
    for model in ["digits-logreg", "digits-mlp"] {
        let version = dir.join(model).join("1");
        assert!(
            std::fs::read(version.join("model.wasm"))
                .unwrap()
                .starts_with(b"\0asm")
        );
        let config = std::fs::read_to_string(version.join("config.toml")).unwrap();
        assert!(config.contains("replicas = 3"), "{config}");
    }
}

#[test]
fn idle_connections_cannot_take_every_open_file_of_the_server() {
    // The flood below needs more than a default `ulimit -n` on this side too.
    rlimit::increase_nofile_limit(4096).unwrap();
    let server = Server::start_with_open_files(&fresh_dir("cli-open-files"), 1024);
    let addr = server.url.strip_prefix("http://").unwrap().to_string();
    let flood: Vec<std::net::TcpStream> = (0..1100)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    // A healthy client, on a new connection, still gets its answer (without the connection
    // limit, accept failed with "Too many open files" and it waited for ever).
    let mut healthy = Command::new(SLUICE)
        .arg("models")
        .env("SLUICE_SERVER", &server.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while healthy.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(30) {
            healthy.kill().unwrap();
            panic!("no answer within 30 s while 1100 idle connections were open");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let listed = stdout(&healthy.wait_with_output().unwrap());
    assert!(listed.contains("digits-logreg"), "{listed}");
    drop(flood);
}

#[test]
fn usage_errors_exit_with_2() {
    let output = Command::new(SLUICE).args(["predict"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
}

/// `serve --state` takes a Redis URL only, and stops at once, saying why, when Redis cannot be
/// reached (the shared-state tests run it against a real Redis).
#[test]
fn serve_with_shared_state_needs_a_redis_it_can_reach() {
    let serve = |state: &str| {
        Command::new(SLUICE)
            .args(SERVE_ON_ANY_PORTS)
            .args(["--state", state])
            .output()
            .unwrap()
    };
    let missing = serve("redis+unix:///nonexistent/redis.sock");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--state: cannot reach Redis; is it running"),
        "{stderr}"
    );
    let not_redis = serve("postgres://db/state");
    let stderr = String::from_utf8_lossy(&not_redis.stderr);
    assert!(stderr.contains("expected a Redis URL"), "{stderr}");
    let both = Command::new(SLUICE)
        .args([
            "serve",
            "--state",
            "redis://127.0.0.1:6379",
            "--state-dir",
            "/tmp",
        ])
        .output()
        .unwrap();
    assert_eq!(
        both.status.code(),
        Some(2),
        "--state and --state-dir conflict"
    );
}

/// The feedback count `sluice apps state APP` reports.
fn feedback_count(server: &Server, app: &str) -> u64 {
    let state = stdout(&server.run(&["apps", "state", app]));
    let first = state.lines().next().unwrap();
    first
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected state line {first:?}"))
}

#[test]
fn applications_and_acknowledged_feedback_survive_kill_9() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let state_dir = fresh_dir("cli-kill-state");
    let mut server = Server::start(&state_dir);
    let created = stdout(&server.run(&[
        "apps",
        "create",
        "digits",
        "--models",
        "digits-logreg,digits-mlp",
        "--policy",
        "exp4",
        "--slo-ms",
        "1000",
    ]));
    assert!(created.contains("exp4"), "{created}");
    // Exp4 runs every model and weighs their votes: the state shows each one's share.
    let state = stdout(&server.run(&["apps", "state", "digits"]));
    assert!(
        state.contains("VOTE SHARE") && !state.contains("P(DRAW)"),
        "{state}"
    );
    let shares: Vec<&str> = state
        .lines()
        .filter(|line| line.starts_with("digits-"))
        .filter_map(|line| line.split('\t').nth(2))
        .collect();
    assert_eq!(shares, ["0.5000", "0.5000"], "{state}");
    let input = repo_file("docs/examples/digit-0.json");
    let predicted = stdout(&server.run(&[
        "apps",
        "predict",
        "digits",
        "--input-file",
        input.to_str().unwrap(),
    ]));
    assert!(predicted.contains("\"value\": 0"), "{predicted}");
    // A model loaded through the API, then scaled: both are recorded.
    let config = state_dir.join("straggler.cfg");
    std::fs::write(&config, "straggler").unwrap();
    let faulty = sample_wasm("faulty");
    let load = [
        faulty.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    stdout(&server.run(&[&["load"], &load[..], &["--name", "kept"]].concat()));
    stdout(&server.run(&["models", "scale", "kept", "3"]));
    // Feedback in a loop, counting acknowledgements, while the server is killed.
    let acknowledged = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let url = server.url.clone();
    let sender = {
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let status = Command::new(SLUICE)
                    .args(["feedback", "digits", "--label", "0", "--input-file"])
                    .arg(&input)
                    .env("SLUICE_SERVER", &url)
                    .output()
                    .unwrap()
                    .status;
                if !status.success() {
                    break;
                }
                acknowledged.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    while acknowledged.load(Ordering::SeqCst) < 5 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    server.child.kill().unwrap(); // SIGKILL: no drain, no flush
    server.child.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    sender.join().unwrap();
    let acknowledged = acknowledged.load(Ordering::SeqCst);
    let mut restarted = Server::start(&state_dir);
    let apps = stdout(&restarted.run(&["apps"]));
    assert!(apps.contains("digits-logreg, digits-mlp"), "{apps}");
    let restored = feedback_count(&restarted, "digits");
    // Every acknowledged event is there; one more may have committed just before the kill
    // without its acknowledgement reaching the client.
    assert!(
        restored == acknowledged || restored == acknowledged + 1,
        "{acknowledged} acknowledged, {restored} restored"
    );
    let replicas = |server: &Server| -> Option<u64> {
        let listed: serde_json::Value =
            serde_json::from_str(&stdout(&server.run(&["models", "--json"]))).unwrap();
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "kept")
            .map(|m| m["replicas"].as_u64().unwrap())
    };
    assert_eq!(
        replicas(&restarted),
        Some(3),
        "the API-loaded model is back, scaled"
    );
    // An unload is recorded too: the next start does not bring the model back.
    let unloaded = stdout(&restarted.run(&["unload", "kept"]));
    assert_eq!(unloaded, "unloaded kept versions 1\n");
    assert!(restarted.stop().success());
    let mut again = Server::start(&state_dir);
    assert_eq!(replicas(&again), None);
    assert!(again.stop().success());
}

#[test]
fn the_cli_talks_tls_to_a_tls_server() {
    let dir = fresh_dir("cli-tls");
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let mut server =
        Server::start_with(&dir.join("state"), &["--tls-cert", cert, "--tls-key", key]);
    let models = stdout(&server.run(&["models", "--ca-cert", cert]));
    assert!(models.contains("digits-mlp"), "{models}");
    let without_ca = server.run(&["models"]);
    assert_eq!(without_ca.status.code(), Some(1));
    let message = String::from_utf8_lossy(&without_ca.stderr);
    assert!(message.contains("needs --ca-cert"), "{message}");
    assert!(server.stop().success());
}

/// `sluice load --onnx --onnx-runner sandbox` says what the seconds of its first load are
/// for, before it sends the graph (here to an address where nothing listens, so that no
/// runner is compiled).
#[test]
fn an_onnx_load_says_that_the_runner_compiles() {
    let graph = repo_file("sample-models/onnx/digits-sklearn.onnx");
    let output = Command::new(SLUICE)
        .args([
            "load",
            "--onnx",
            graph.to_str().unwrap(),
            "--onnx-runner",
            "sandbox",
        ])
        .env("SLUICE_SERVER", "http://127.0.0.1:1")
        .output()
        .expect("run sluice");
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success());
    assert!(
        said.contains("compiles it on its first such load"),
        "{said}"
    );
    assert!(said.contains("is `sluice serve` running there?"), "{said}");
}
