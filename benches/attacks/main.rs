//! The attacks of issue 16, repeated against a real `sluice serve` to measure what the bounds
//! hold them to: the server's resident memory while the attack holds what it can, and how long
//! a healthy client then waits for a prediction. Each attack gets a fresh server process (so
//! its memory is the server's alone), on loopback, with default settings unless the attack
//! needs another (`ulimit -n 1024` for the connection flood).
//!
//! Run with `benches/attacks/run.sh`; it prints one line per attack, for
//! docs/reliability.md.

use bytes::Bytes;
use sluice_api::proto::{self, sluice_client::SluiceClient};
use sluice_benches::ServeProcess;
use sluice_train::Digits;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tonic::transport::Channel;

/// A `sluice serve` process with the bundled samples.
struct Server {
    process: ServeProcess,
    grpc: SocketAddr,
    http: SocketAddr,
    state_dir: PathBuf,
}

impl Server {
    /// Starts `sluice serve` with `flags` added; `shell_prefix` runs before it in `sh` (a
    /// ulimit).
    fn start(
        sluice: &Path,
        work: &Path,
        name: &str,
        shell_prefix: &str,
        flags: &str,
    ) -> anyhow::Result<Server> {
        let state_dir = work.join(name);
        std::fs::create_dir_all(&state_dir)?;
        let script = format!(
            "{shell_prefix} exec \"$0\" serve --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
             --sample-replicas 1 --state-dir \"$1\" --cache-dir \"$2\" {flags}"
        );
        let mut command = Command::new("sh");
        command
            .args(["-c", &script])
            .arg(sluice)
            .arg(&state_dir)
            .arg(work.join("cache"));
        let process = ServeProcess::start(command)?;
        Ok(Server {
            grpc: process.grpc,
            http: process.http,
            process,
            state_dir,
        })
    }

    fn resident_mib(&self) -> f64 {
        self.process.resident_mib()
    }

    async fn client(&self) -> anyhow::Result<SluiceClient<Channel>> {
        Ok(SluiceClient::connect(format!("http://{}", self.grpc)).await?)
    }

    /// How long a new client takes to connect and get a prediction (`None`: it got none
    /// within 10 s).
    async fn healthy_answer(&self) -> Option<Duration> {
        let started = Instant::now();
        let ask = async {
            let mut client = self.client().await.ok()?;
            client.predict(digit_request()).await.ok()
        };
        tokio::time::timeout(Duration::from_secs(10), ask)
            .await
            .ok()
            .flatten()
            .map(|_| started.elapsed())
    }

    /// SIGTERM; how long until the process exited.
    fn terminate(mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let child = &mut self.process.child;
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        child.wait()?;
        Ok(started.elapsed())
    }
}

fn digit_request() -> proto::PredictRequest {
    let digits = Digits::load_default().expect("the digits data");
    sluice_benches::digit_request("digits-logreg", &digits.holdout[0].pixels)
}

/// A raw HTTP/2 connection to the gRPC port.
async fn h2_connection(addr: SocketAddr) -> anyhow::Result<h2::client::SendRequest<Bytes>> {
    let (client, connection) = h2::client::handshake(TcpStream::connect(addr).await?).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Starts a `Predict` whose message announces `announced` bytes and sends `sent` of them.
async fn unfinished_predict(
    client: &h2::client::SendRequest<Bytes>,
    announced: usize,
    sent: usize,
) -> anyhow::Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>)> {
    let request = http::Request::post("http://localhost/sluice.v1.Sluice/Predict")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?;
    let mut client = client.clone().ready().await?;
    let (response, mut body) = client.send_request(request, false)?;
    let mut message = vec![0u8];
    message.extend((announced as u32).to_be_bytes());
    message.resize(5 + sent, 0);
    body.send_data(message.into(), false)?;
    Ok((response, body))
}

/// The `grpc-status` of an answer that came as headers only (a refusal), if it came within
/// `wait`.
async fn refused_status(response: h2::client::ResponseFuture, wait: Duration) -> Option<String> {
    let response = tokio::time::timeout(wait, response).await.ok()?.ok()?;
    let status = response.headers().get("grpc-status")?;
    Some(status.to_str().ok()?.to_string())
}

fn ms(duration: Option<Duration>) -> String {
    duration.map_or("no answer in 10 s".into(), |d| {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    })
}

/// 1100 idle TCP connections to a server limited to 1024 open files.
async fn idle_flood(sluice: &Path, work: &Path) -> anyhow::Result<()> {
    let server = Server::start(sluice, work, "flood", "ulimit -n 1024;", "")?;
    let before = server.resident_mib();
    let mut flood = Vec::new();
    for _ in 0..1100 {
        flood.push(TcpStream::connect(server.grpc).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answer = server.healthy_answer().await;
    println!(
        "idle flood (1100 connections, ulimit -n 1024): RSS {before:.0} -> {:.0} MiB; healthy \
         client answered in {}",
        server.resident_mib(),
        ms(answer)
    );
    drop(flood);
    Ok(())
}

/// 2 connections x 8 streams, each announcing a 60 MiB message and sending all but 1 MiB.
async fn unfinished_messages(sluice: &Path, work: &Path) -> anyhow::Result<()> {
    let server = Server::start(sluice, work, "unfinished", "", "")?;
    let before = server.resident_mib();
    let mut held = Vec::new();
    for _ in 0..2 {
        let connection = h2_connection(server.grpc).await?;
        for _ in 0..8 {
            held.push(unfinished_predict(&connection, 60 << 20, 59 << 20).await?);
        }
    }
    // Let the data arrive (or be refused).
    let mut refused = 0;
    let mut waiting = Vec::new();
    for (response, body) in held {
        match refused_status(response, Duration::from_millis(500)).await {
            Some(status) if status == "8" => refused += 1,
            _ => waiting.push(body),
        }
    }
    let during = server.resident_mib();
    let answer = server.healthy_answer().await;
    println!(
        "unfinished messages (16 x 59 of 60 MiB): {refused} of 16 refused RESOURCE_EXHAUSTED; \
         RSS {before:.0} -> {during:.0} MiB while held; healthy client answered in {}",
        ms(answer)
    );
    // The body timeout (30 s) ends the silent ones and gives their bytes back.
    tokio::time::sleep(Duration::from_secs(32)).await;
    println!(
        "  after the 30 s body timeout: RSS {:.0} MiB",
        server.resident_mib()
    );
    drop(waiting);
    Ok(())
}

/// Huge user ids: 30 Feedback with 4 MiB ids, 40 PredictApp with 16 MiB ids.
async fn huge_user_ids(sluice: &Path, work: &Path) -> anyhow::Result<()> {
    let server = Server::start(sluice, work, "users", "", "")?;
    let mut client = server.client().await?;
    let status = Command::new(sluice)
        .args([
            "apps",
            "create",
            "digits",
            "--models",
            "digits-logreg,digits-mlp",
        ])
        .args(["--policy", "exp4"])
        .env("SLUICE_SERVER", format!("http://{}", server.grpc))
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "creating the application failed");
    let store = server.state_dir.join("state.redb");
    let (before, store_before) = (server.resident_mib(), std::fs::metadata(&store)?.len());
    let pixels = digit_request().inputs;
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..30u8 {
        let request = proto::FeedbackRequest {
            app: "digits".into(),
            user_id: String::from(char::from(b'a' + i % 26)).repeat(4 << 20),
            inputs: pixels.clone(),
            labels: vec![proto::Value {
                value: Some(proto::value::Value::ClassLabel(0)),
            }],
        };
        let code = client.feedback(request).await.err().map(|s| s.code());
        *codes.entry(format!("{code:?}")).or_default() += 1;
    }
    for i in 0..40u8 {
        let request = proto::PredictAppRequest {
            app: "digits".into(),
            user_id: String::from(char::from(b'a' + i % 26)).repeat(16 << 20),
            inputs: pixels.clone(),
            ..Default::default()
        };
        let code = client.predict_app(request).await.err().map(|s| s.code());
        *codes.entry(format!("{code:?}")).or_default() += 1;
    }
    let answer = server.healthy_answer().await;
    println!(
        "huge user ids (30 Feedback x 4 MiB, 40 PredictApp x 16 MiB): answers {codes:?}; RSS \
         {before:.0} -> {:.0} MiB; state.redb {:.1} -> {:.1} MiB; healthy client answered in {}",
        server.resident_mib(),
        store_before as f64 / 1048576.0,
        std::fs::metadata(&store)?.len() as f64 / 1048576.0,
        ms(answer)
    );
    Ok(())
}

/// `ScaleModel(digits-logreg, 20000)`.
async fn scale_beyond_the_host(sluice: &Path, work: &Path) -> anyhow::Result<()> {
    let server = Server::start(sluice, work, "scale", "", "")?;
    let mut client = server.client().await?;
    let before = server.resident_mib();
    let started = Instant::now();
    let result = client
        .scale_model(proto::ScaleModelRequest {
            name: "digits-logreg".into(),
            version: String::new(),
            replicas: 20_000,
        })
        .await;
    let took = started.elapsed();
    let answer = server.healthy_answer().await;
    println!(
        "ScaleModel to 20000 replicas: {:?} in {}; RSS {before:.0} -> {:.0} MiB; healthy client \
         answered in {}",
        result.err().map(|s| s.code()),
        ms(Some(took)),
        server.resident_mib(),
        ms(answer)
    );
    Ok(())
}

/// Reads until the server closes the connection; how long that took (`None`: not within
/// `wait`).
async fn closed_after(stream: &mut TcpStream, wait: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    let read_to_end = async {
        while let Ok(n) = tokio::io::AsyncReadExt::read(stream, &mut buffer).await {
            if n == 0 {
                return;
            }
        }
    };
    tokio::time::timeout(wait, read_to_end).await.ok()?;
    Some(started.elapsed())
}

/// A connection that sends half a request line and stops, and a keep-alive connection left
/// idle after one request (idle timeout 5 s here, to keep the run short).
async fn silent_and_idle(sluice: &Path, work: &Path) -> anyhow::Result<()> {
    let server = Server::start(sluice, work, "silent", "", "--idle-timeout-s 5")?;
    let mut silent = TcpStream::connect(server.http).await?;
    silent
        .write_all(b"GET /v2/health/live HTTP/1.1\r\n")
        .await?;
    let mut idle = TcpStream::connect(server.http).await?;
    idle.write_all(b"GET /v2/health/live HTTP/1.1\r\nhost: sluice\r\n\r\n")
        .await?;
    let answer = server.healthy_answer().await;
    let (silent, idle) = tokio::join!(
        closed_after(&mut silent, Duration::from_secs(30)),
        closed_after(&mut idle, Duration::from_secs(30))
    );
    let seconds = |d: Option<Duration>| {
        d.map_or("not within 30 s".into(), |d| {
            format!("{:.1} s", d.as_secs_f64())
        })
    };
    println!(
        "half a request line: closed after {} (header timeout 10 s); idle keep-alive: closed \
         after {} (idle timeout 5 s); healthy client answered in {}",
        seconds(silent),
        seconds(idle),
        ms(answer)
    );
    Ok(())
}

/// A gRPC message announcing 64 MiB + 1 byte.
async fn oversized_message(sluice: &Path, work: &Path) -> anyhow::Result<()> {
    let server = Server::start(sluice, work, "oversized", "", "")?;
    let before = server.resident_mib();
    let connection = h2_connection(server.grpc).await?;
    let started = Instant::now();
    let (response, _body) = unfinished_predict(&connection, (64 << 20) + 1, 1 << 20).await?;
    let status = refused_status(response, Duration::from_secs(10)).await;
    let took = started.elapsed();
    println!(
        "a gRPC message announcing 64 MiB + 1: grpc-status {} in {}; RSS {before:.0} -> {:.0} MiB",
        status.as_deref().unwrap_or("none"),
        ms(Some(took)),
        server.resident_mib()
    );
    Ok(())
}

/// SIGTERM while three clients stall: a REST body, a gRPC message, an HTTP/2 client that
/// never reads.
async fn terminate_with_stalled_clients(sluice: &Path, work: &Path) -> anyhow::Result<()> {
    let server = Server::start(sluice, work, "drain", "", "")?;
    let mut rest = TcpStream::connect(server.http).await?;
    rest.write_all(
        b"POST /v2/models/digits-logreg/infer HTTP/1.1\r\nhost: sluice\r\ncontent-length: 100\r\n\r\n{",
    )
    .await?;
    let connection = h2_connection(server.grpc).await?;
    let _stalled = unfinished_predict(&connection, 100, 1).await?;
    let mut deaf = TcpStream::connect(server.grpc).await?;
    deaf.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let took = tokio::task::spawn_blocking(move || server.terminate()).await??;
    println!(
        "SIGTERM with a stalled REST body, a stalled gRPC message and a deaf HTTP/2 client: \
         exited after {:.1} s (drain deadline 20 s)",
        took.as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sluice = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("usage: attack-figures PATH/TO/sluice"))?,
    );
    // The flood needs more descriptors than a default `ulimit -n` on this side too.
    rlimit::increase_nofile_limit(u64::MAX)?;
    let work = std::env::temp_dir().join(format!("sluice-attacks-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    idle_flood(&sluice, &work).await?;
    silent_and_idle(&sluice, &work).await?;
    oversized_message(&sluice, &work).await?;
    unfinished_messages(&sluice, &work).await?;
    huge_user_ids(&sluice, &work).await?;
    scale_beyond_the_host(&sluice, &work).await?;
    terminate_with_stalled_clients(&sluice, &work).await?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}
