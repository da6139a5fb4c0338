//! Servers sharing their state through a real Redis (`redis-server`, started by each test on
//! a socket of its own): an application made on one is served by the others, feedback taken
//! by one changes what the others select, feedback on one is joined with the model that
//! answered the query on another, concurrent feedback for one user on two servers
//! loses no update, acknowledged feedback survives `kill -9` of Redis (append-only file,
//! fsync'd on every write), and a server cut off from Redis keeps answering predictions,
//! refuses feedback with UNAVAILABLE, and catches up once it can reach Redis again.

use crate::selection::{
    application, exp4, feedback, predict_app, register, selection_state, weight,
};
use crate::support::{CACHE, TestServer, fp32};
use sluice_api::proto;
use sluice_serving::store::Store;
use sluice_train::{Digits, Sample};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `redis-server` of the test's own, on a Unix socket in a folder of its own.
struct RedisServer {
    dir: PathBuf,
    durable: bool,
    child: Child,
}

impl RedisServer {
    /// Starts Redis in a fresh folder named after `name`; `durable`: with the append-only
    /// file fsync'd before every answer (the setting `docs/deploy.md` asks for).
    fn start(name: &str, durable: bool) -> RedisServer {
        let dir = PathBuf::from(CACHE).join(format!("redis-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let child = Self::spawn(&dir, durable);
        RedisServer {
            dir,
            durable,
            child,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    fn spawn(dir: &std::path::Path, durable: bool) -> Child {
        let socket = dir.join("redis.sock");
        let _ = std::fs::remove_file(&socket);
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args(["--unixsocketperm", "700", "--save", "", "--dir"])
            .arg(dir)
            .args(["--appendonly", if durable { "yes" } else { "no" }])
            .args(["--appendfsync", "always", "--logfile"])
            .arg(dir.join("redis.log"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): the shared-state tests run a real Redis; \
                     install it (Debian: apt-get install redis-server)"
                )
            });
        let started = Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not open {}; see {}",
                socket.display(),
                dir.join("redis.log").display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// `kill -9`, then a new Redis on the same folder and socket.
    fn kill_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = Self::spawn(&self.dir, self.durable);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy to Redis's socket that can be cut, as a network partition is: while cut,
/// connections stay open and nothing crosses them.
struct Link {
    url: String,
    cut: Arc<AtomicBool>,
}

impl Link {
    async fn to(redis: &RedisServer) -> Link {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let cut = Arc::new(AtomicBool::new(false));
        let (socket, flag) = (redis.socket(), cut.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::UnixStream::connect(&socket).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(forward(client_read, server_write, flag.clone()));
                tokio::spawn(forward(server_read, client_write, flag.clone()));
            }
        });
        Link { url, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, holding the bytes back while `cut` is set.
async fn forward(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    cut: Arc<AtomicBool>,
) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while cut.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// A server with the bundled digits models whose state is in the Redis at `url`.
async fn replica(url: &str) -> TestServer {
    let store = Store::connect(url).await.expect("Redis is reachable");
    TestServer::start(|server| server.store(store))
        .await
        .load_samples()
        .await
}

/// Waits (up to 10 s) until `check` holds.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not within 10 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ensemble(name: &str) -> proto::Application {
    application(name, &["digits-logreg", "digits-mlp"], 1000, exp4())
}

/// Feedback for alice: the true label of `sample`.
fn alices_label(app: &str, sample: &Sample) -> proto::FeedbackRequest {
    proto::FeedbackRequest {
        app: app.into(),
        user_id: "alice".into(),
        inputs: vec![fp32("pixels", &[1, 64], &sample.pixels)],
        labels: vec![crate::selection::class(sample.label as i64)],
    }
}

async fn try_predict(
    server: &mut TestServer,
    app: &str,
    sample: &Sample,
) -> Result<(), tonic::Status> {
    server
        .client
        .predict_app(proto::PredictAppRequest {
            app: app.into(),
            user_id: "alice".into(),
            inputs: vec![fp32("pixels", &[1, 64], &sample.pixels)],
            bypass_cache: false,
        })
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_made_on_one_server_is_served_and_taught_by_the_others() {
    let redis = RedisServer::start("replicas", false);
    let digits = Digits::load_default().unwrap();
    let mut a = replica(&redis.url()).await;
    let mut b = replica(&redis.url()).await;
    let mut c = replica(&redis.url()).await;
    register(&mut a, ensemble("shared")).await;
    // B and C learn of it from the change A published.
    for server in [&mut b, &mut c] {
        eventually("the application reaches every server", async || {
            try_predict(server, "shared", &digits.holdout[0])
                .await
                .is_ok()
        })
        .await;
    }
    // C reads alice's state before any feedback (and keeps it in memory).
    let before = selection_state(&mut c, "shared", "alice").await;
    assert_eq!(before.feedback_count, 0);
    let mut taught = None;
    for sample in &digits.holdout[..20] {
        predict_app(&mut b, "shared", "alice", sample).await;
        taught = Some(
            feedback(&mut b, "shared", "alice", sample)
                .await
                .state
                .unwrap(),
        );
    }
    let taught = taught.unwrap();
    assert_eq!(taught.feedback_count, 20);
    eventually("C selects with what B learned", async || {
        let seen = selection_state(&mut c, "shared", "alice").await;
        seen.feedback_count == 20
            && weight(&seen, "digits-logreg") == weight(&taught, "digits-logreg")
            && weight(&seen, "digits-mlp") == weight(&taught, "digits-mlp")
    })
    .await;
    // A deletion made on C is seen by A.
    c.client
        .delete_application(proto::DeleteApplicationRequest {
            app: "shared".into(),
        })
        .await
        .unwrap();
    eventually("the deletion reaches A", async || {
        try_predict(&mut a, "shared", &digits.holdout[0])
            .await
            .is_err_and(|status| status.code() == tonic::Code::NotFound)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_feedback_for_one_user_on_two_servers_loses_no_update() {
    const EACH: usize = 40;
    let redis = RedisServer::start("contention", false);
    let digits = Digits::load_default().unwrap();
    let mut a = replica(&redis.url()).await;
    let mut b = replica(&redis.url()).await;
    register(&mut a, ensemble("busy")).await;
    eventually("the application reaches B", async || {
        try_predict(&mut b, "busy", &digits.holdout[0])
            .await
            .is_ok()
    })
    .await;
    let mut tasks = tokio::task::JoinSet::new();
    for client in [a.client.clone(), b.client.clone()] {
        for task in 0..4 {
            let mut client = client.clone();
            let samples: Vec<Sample> = digits.holdout[task * 10..task * 10 + EACH / 4].to_vec();
            tasks.spawn(async move {
                for sample in samples {
                    client
                        .feedback(alices_label("busy", &sample))
                        .await
                        .expect("feedback is taken");
                }
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    for server in [&mut a, &mut b] {
        eventually(
            "every acknowledged feedback counts, on both servers",
            async || {
                selection_state(server, "busy", "alice")
                    .await
                    .feedback_count
                    == 2 * EACH as u64
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_feedback_survives_kill_9_of_redis() {
    let mut redis = RedisServer::start("durable", true);
    let digits = Digits::load_default().unwrap();
    let mut server = replica(&redis.url()).await;
    register(&mut server, ensemble("kept")).await;
    for sample in &digits.holdout[..10] {
        feedback(&mut server, "kept", "alice", sample).await;
    }
    redis.kill_and_restart();
    // A server started now finds the application and the learned state in Redis, and the
    // running one reconnects and goes on learning from the same state.
    let mut fresh = replica(&redis.url()).await;
    assert_eq!(
        selection_state(&mut fresh, "kept", "alice")
            .await
            .feedback_count,
        10
    );
    eventually("the running server reconnects", async || {
        server
            .client
            .feedback(alices_label("kept", &digits.holdout[10]))
            .await
            .is_ok()
    })
    .await;
    eventually(
        "the learned state is the one Redis kept, plus one",
        async || {
            selection_state(&mut fresh, "kept", "alice")
                .await
                .feedback_count
                == 11
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_cut_off_from_redis_predicts_refuses_feedback_and_catches_up() {
    let redis = RedisServer::start("partition", false);
    let digits = Digits::load_default().unwrap();
    let link = Link::to(&redis).await;
    let mut cut_off = replica(&link.url).await;
    let mut other = replica(&redis.url()).await;
    register(&mut other, ensemble("split")).await;
    eventually(
        "the application reaches the server behind the link",
        async || {
            try_predict(&mut cut_off, "split", &digits.holdout[0])
                .await
                .is_ok()
        },
    )
    .await;
    link.set_cut(true);
    // Predictions go on from the state the server holds.
    for sample in &digits.holdout[..5] {
        predict_app(&mut cut_off, "split", "alice", sample).await;
    }
    // Feedback cannot be made durable: it is refused, not dropped in silence.
    let refused = cut_off
        .client
        .feedback(alices_label("split", &digits.holdout[0]))
        .await
        .expect_err("feedback while cut off");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("Redis"), "{refused:?}");
    // Meanwhile the other server learns.
    for sample in &digits.holdout[..3] {
        feedback(&mut other, "split", "alice", sample).await;
    }
    link.set_cut(false);
    eventually(
        "the server catches up with what was learned meanwhile",
        async || {
            selection_state(&mut cut_off, "split", "alice")
                .await
                .feedback_count
                == 3
        },
    )
    .await;
    feedback(&mut cut_off, "split", "alice", &digits.holdout[4]).await;
    eventually(
        "feedback taken again reaches the other server",
        async || {
            selection_state(&mut other, "split", "alice")
                .await
                .feedback_count
                == 4
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_loaded_through_one_server_are_loaded_scaled_pinned_and_unloaded_by_the_others() {
    use proto::load_model_request::Component;
    let redis = RedisServer::start("models", false);
    let digits = Digits::load_default().unwrap();
    let store = Store::connect(&redis.url()).await.unwrap();
    let mut a = TestServer::start(|server| server.store(store)).await;
    let store = Store::connect(&redis.url()).await.unwrap();
    let mut b = TestServer::start(|server| server.store(store)).await;
    let config = std::fs::read(sluice_train::params_path("digits-logreg")).unwrap();
    for version in ["1", "2"] {
        a.client
            .load_model(proto::LoadModelRequest {
                component: Some(Component::Wasm(crate::support::sample_component(
                    "digits_logreg",
                ))),
                config: config.clone(),
                name: "everywhere".into(),
                version: version.into(),
                replicas: 1,
                ..proto::LoadModelRequest::default()
            })
            .await
            .expect("load");
    }
    let versions = async |server: &mut TestServer| -> Vec<(String, u32, bool)> {
        let mut seen: Vec<_> = server
            .models()
            .await
            .into_iter()
            .filter(|m| m.name == "everywhere")
            .map(|m| (m.version, m.replicas, m.is_default_version))
            .collect();
        seen.sort();
        seen
    };
    eventually("B loads what A loaded", async || {
        versions(&mut b).await.len() == 2
    })
    .await;
    b.client
        .predict(crate::support::digits_request(
            "everywhere",
            &digits.holdout[..2],
        ))
        .await
        .expect("B serves it");
    a.client
        .scale_model(proto::ScaleModelRequest {
            name: "everywhere".into(),
            version: "1".into(),
            replicas: 2,
        })
        .await
        .unwrap();
    a.client
        .set_default_version(proto::SetDefaultVersionRequest {
            name: "everywhere".into(),
            version: "1".into(),
        })
        .await
        .unwrap();
    let expected = vec![("1".to_string(), 2, true), ("2".to_string(), 1, false)];
    assert_eq!(versions(&mut a).await, expected);
    eventually("B scales and pins as A did", async || {
        versions(&mut b).await == expected
    })
    .await;
    a.client
        .unload_model(proto::UnloadModelRequest {
            name: "everywhere".into(),
            version: String::new(),
        })
        .await
        .unwrap();
    eventually("B unloads what A unloaded", async || {
        b.client
            .predict(crate::support::digits_request(
                "everywhere",
                &digits.holdout[..1],
            ))
            .await
            .is_err_and(|status| status.code() == tonic::Code::NotFound)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_on_another_server_is_joined_with_the_models_that_answered() {
    let redis = RedisServer::start("joined", false);
    let digits = Digits::load_default().unwrap();
    let mut a = replica(&redis.url()).await;
    let mut b = replica(&redis.url()).await;
    let exp3 = proto::policy::Kind::Exp3(proto::policy::Exp3 {
        eta: Some(0.5),
        gamma: Some(0.5),
    });
    register(
        &mut a,
        application("joined", &["digits-logreg", "digits-mlp"], 1000, exp3),
    )
    .await;
    eventually("the application reaches B", async || {
        try_predict(&mut b, "joined", &digits.holdout[0])
            .await
            .is_ok()
    })
    .await;
    // Both servers draw from a generator seeded by the application's spec: B's draws are put
    // ahead of A's, so that B choosing for itself would differ from what A chose.
    for sample in &digits.holdout[..7] {
        predict_app(&mut b, "joined", "warm-up", sample).await;
    }
    let records = || {
        let listed = Command::new("redis-cli")
            .arg("-s")
            .arg(redis.socket())
            .args(["--scan", "--pattern", "sluice:query:joined:*:alice"])
            .output()
            .expect("redis-cli (it comes with redis-server)");
        String::from_utf8_lossy(&listed.stdout).lines().count()
    };
    // (B's first query, waiting for the application, was alice's too.)
    let earlier = records();
    for (i, sample) in digits.holdout[10..20].iter().enumerate() {
        let answer = predict_app(&mut a, "joined", "alice", sample).await;
        assert_eq!(answer.models_queried.len(), 1, "{answer:?}");
        // The record is written in the background: wait until Redis has it.
        eventually("A's record of the query in Redis", async || {
            records() == earlier + i + 1
        })
        .await;
        let outcome = feedback(&mut b, "joined", "alice", sample).await;
        assert_eq!(
            outcome.chosen, answer.models_queried,
            "feedback on B is joined with the model that answered on A"
        );
    }
}
