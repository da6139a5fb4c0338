//! Overload and recovery (issue 7), measured: the throughput one replica sustains, then two
//! seconds of open-loop load at ten times that rate, then how long until the replica serves at
//! its full throughput again. Every request of the burst is answered and counted by status;
//! resident memory is read before and after.
//!
//! Run with `benches/overload/run.sh`: it starts `sluice serve` as a process of its own (so its
//! memory is the server's alone) and drives it over gRPC on loopback. The load generator
//! shares the machine's two cores with the server.

use sluice_api::proto::load_model_request::Component;
use sluice_api::proto::{self, batching_config::Mode, sluice_client::SluiceClient};
use sluice_benches::{ServeProcess, digit_request};
use sluice_train::Digits;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Clients of the closed-loop phases.
const CLIENTS: usize = 16;
/// Width of a throughput window after the burst.
const WINDOW: Duration = Duration::from_millis(50);
/// Connections the burst is spread over.
const BURST_CONNECTIONS: usize = 8;

fn request(digits: &Digits, i: usize) -> proto::PredictRequest {
    digit_request("small", &digits.holdout[i % digits.holdout.len()].pixels)
}

/// Runs `CLIENTS` closed-loop clients for `duration`, counting completions into `done`.
async fn closed_loop(
    client: &SluiceClient<Channel>,
    digits: &Arc<Digits>,
    duration: Duration,
    done: &Arc<AtomicU64>,
) {
    let until = Instant::now() + duration;
    let workers: Vec<_> = (0..CLIENTS)
        .map(|k| {
            let (mut client, digits, done) = (client.clone(), digits.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = k;
                while Instant::now() < until {
                    if client.predict(request(&digits, i)).await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    i += CLIENTS;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a client task");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sluice = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: overload-recovery PATH/TO/sluice"))?;
    let mut command = std::process::Command::new(&sluice);
    command.args([
        "serve",
        "--no-samples",
        "--no-state",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ]);
    let server = ServeProcess::start(command)?;
    let url = format!("http://{}", server.grpc);
    let mut client = SluiceClient::connect(url.clone()).await?;
    let wasm = std::fs::read(
        std::path::Path::new(sluice_samples::SAMPLE_WASM_DIR).join("digits_logreg.wasm"),
    )?;
    client
        .load_model(proto::LoadModelRequest {
            component: Some(Component::Wasm(wasm)),
            config: std::fs::read(sluice_train::params_path("digits-logreg"))?,
            name: "small".into(),
            replicas: 1,
            limits: Some(proto::ModelLimits {
                queue_capacity: 32,
                ..Default::default()
            }),
            batching: Some(proto::BatchingConfig {
                mode: Mode::Static as i32,
                static_batch_size: 4,
                slo_ms: 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    let digits = Arc::new(Digits::load_default()?);

    // 1. What the replica sustains.
    let done = Arc::new(AtomicU64::new(0));
    closed_loop(&client, &digits, Duration::from_millis(500), &done).await; // warm up
    done.store(0, Ordering::Relaxed);
    let baseline_time = Duration::from_secs(2);
    closed_loop(&client, &digits, baseline_time, &done).await;
    let baseline = done.load(Ordering::Relaxed) as f64 / baseline_time.as_secs_f64();
    let rss_before = server.resident_mib();
    println!(
        "baseline: {baseline:.0} req/s with {CLIENTS} closed-loop clients; RSS {rss_before:.0} MiB"
    );

    // 2. Ten times that, open loop, for two seconds.
    let rate = baseline * 10.0;
    let burst = Duration::from_secs(2);
    let tick = Duration::from_millis(5);
    let per_tick = rate * tick.as_secs_f64();
    let started = Instant::now();
    let mut burst_clients = Vec::new();
    for _ in 0..BURST_CONNECTIONS {
        burst_clients.push(SluiceClient::connect(url.clone()).await?);
    }
    let mut calls = Vec::new();
    let mut owed = 0.0;
    let mut interval = tokio::time::interval(tick);
    while started.elapsed() < burst {
        interval.tick().await;
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            let mut client = burst_clients[calls.len() % BURST_CONNECTIONS].clone();
            let request = request(&digits, calls.len());
            calls.push(tokio::spawn(async move {
                client
                    .predict(request)
                    .await
                    .map(drop)
                    .map_err(|s| (s.code(), s.message().to_string()))
            }));
        }
    }
    let sent = calls.len();
    let burst_end = Instant::now();

    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut examples: BTreeMap<String, String> = BTreeMap::new();
    for call in calls {
        let outcome = match call.await? {
            Ok(()) => "served".to_string(),
            Err((code, message)) => {
                let code = format!("{code:?}");
                examples.entry(code.clone()).or_insert(message);
                code
            }
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    let drained = burst_end.elapsed();

    // 3. Once every burst request is answered, on a connection of its own: throughput per
    //    window until it is back.
    let fresh = SluiceClient::connect(url.clone()).await?;
    let done = Arc::new(AtomicU64::new(0));
    let measuring = {
        let (client, digits, done) = (fresh, digits.clone(), done.clone());
        tokio::spawn(async move {
            closed_loop(&client, &digits, Duration::from_millis(1500), &done).await
        })
    };
    let mut windows = Vec::new();
    let mut last = 0;
    for _ in 0..(1500 / WINDOW.as_millis() as usize) {
        tokio::time::sleep(WINDOW).await;
        let now = done.load(Ordering::Relaxed);
        windows.push((now - last) as f64 / WINDOW.as_secs_f64());
        last = now;
    }
    measuring.await?;
    let answered: usize = outcomes.values().sum();
    let recovered = windows
        .iter()
        .position(|&w| w >= 0.9 * baseline)
        .map(|i| (i + 1) as u128 * WINDOW.as_millis());
    let rss_after = server.resident_mib();
    println!(
        "burst: {sent} requests at {rate:.0} req/s for {:.1} s; answered {answered}: {outcomes:?}",
        (burst_end - started).as_secs_f64()
    );
    println!(
        "the last burst request was answered {} ms after the burst ended",
        drained.as_millis()
    );
    for (code, message) in &examples {
        println!("  e.g. {code}: {message}");
    }
    let shown: Vec<String> = windows.iter().take(10).map(|w| format!("{w:.0}")).collect();
    println!(
        "after the burst, req/s per {} ms window: {} ...",
        WINDOW.as_millis(),
        shown.join(" ")
    );
    match recovered {
        Some(ms) => println!("back to >= 90% of the baseline in the first {ms} ms after that"),
        None => println!("not back to 90% of the baseline within 1.5 s"),
    }
    println!("RSS {rss_before:.0} MiB before the burst, {rss_after:.0} MiB after");
    Ok(())
}
