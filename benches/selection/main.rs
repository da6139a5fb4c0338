//! The model-selection experiment behind `docs/selection.md`: held-out digits streamed through
//! applications over real gRPC (an in-process `sluice` server on loopback), each query followed
//! by feedback with its true label.
//!
//! 1. **Drift**: static, epsilon-greedy, Exp3 and Exp4 choose among digits-logreg, digits-mlp and
//!    a model trained on images whose left half is blank; half-way through the stream the
//!    inputs' left half goes blank (a failing sensor), and the policies must move to the model
//!    that copes.
//! 2. **Stragglers**: an Exp4 ensemble with an accurate but slow member (the MLP behind 30 ms
//!    of delayed batching), at a tight SLO that leaves it out and a loose one that waits.
//! 3. **Personalization**: two groups of users whose inputs differ (left half or right half
//!    blank); one state per application against one per user.
//!
//! Run with `benches/selection/run.sh`; it writes `selection.json` and the plots.

use sluice_api::proto::{self, policy::Kind, sluice_client::SluiceClient};
use sluice_frontend::{RunningServer, Server};
use sluice_runtime::{Runtime, RuntimeConfig};
use sluice_samples::SAMPLE_MODELS;
use sluice_serving::ModelLimits;
use sluice_serving::batching::{BatchMode, BatchingConfig};
use sluice_serving::registry::{LoadRequest, Registry};
use sluice_serving::store::Store;
use sluice_train::{Digits, Sample};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Rolling-accuracy window of the plots, in queries.
const WINDOW: usize = 100;
/// Queries per drift and personalization run.
const STREAM: usize = 1600;
/// How long the slow model waits for a fuller batch.
const SLOW_DELAY: Duration = Duration::from_millis(30);

#[derive(Clone, Copy)]
enum Mask {
    None,
    LeftHalf,
    RightHalf,
}

/// Blanks half of each 8-pixel row.
fn masked(pixels: &[f32], mask: Mask) -> Vec<f32> {
    let blank = |column: usize| match mask {
        Mask::None => false,
        Mask::LeftHalf => column < 4,
        Mask::RightHalf => column >= 4,
    };
    pixels
        .iter()
        .enumerate()
        .map(|(i, &p)| if blank(i % 8) { 0.0 } else { p })
        .collect()
}

/// A logistic regression trained (deterministically) on images with `mask` applied.
fn trained_on(digits: &Digits, mask: Mask) -> Vec<u8> {
    let train: Vec<Sample> = digits
        .train
        .iter()
        .map(|s| Sample {
            pixels: masked(&s.pixels, mask),
            label: s.label,
        })
        .collect();
    sluice_sdk::params::encode(&sluice_train::logreg::train(&train).to_params())
}

struct Lab {
    client: SluiceClient<Channel>,
    server: RunningServer,
}

async fn load(
    registry: &Registry,
    sample: &str,
    name: &str,
    config: Vec<u8>,
    batching: BatchingConfig,
) {
    let sample = SAMPLE_MODELS.iter().find(|m| m.name == sample).unwrap();
    registry
        .load(LoadRequest {
            component: sample.component.to_vec(),
            config,
            graphs: Vec::new(),
            name: Some(name.into()),
            version: None,
            replicas: 1,
            autoscale: None,
            limits: ModelLimits::default(),
            batching,
        })
        .await
        .unwrap_or_else(|e| panic!("loading {name}: {e}"));
}

async fn start(digits: &Digits, state: &std::path::Path) -> Lab {
    let registry = Arc::new(Registry::new(Arc::new(
        Runtime::new(RuntimeConfig::default()).expect("runtime"),
    )));
    for sample in SAMPLE_MODELS {
        let batching = BatchingConfig::default();
        load(
            &registry,
            sample.name,
            sample.name,
            sample.config.to_vec(),
            batching,
        )
        .await;
    }
    let batching = BatchingConfig::default();
    let left = trained_on(digits, Mask::LeftHalf);
    load(
        &registry,
        "digits-logreg",
        "digits-left-blind",
        left,
        batching,
    )
    .await;
    let right = trained_on(digits, Mask::RightHalf);
    load(
        &registry,
        "digits-logreg",
        "digits-right-blind",
        right,
        batching,
    )
    .await;
    let mlp = SAMPLE_MODELS
        .iter()
        .find(|m| m.name == "digits-mlp")
        .unwrap();
    let slow = BatchingConfig {
        mode: BatchMode::Static { size: 64 },
        slo: Duration::from_secs(5),
        max_delay: Some(SLOW_DELAY),
    };
    load(
        &registry,
        "digits-mlp",
        "digits-slow",
        mlp.config.to_vec(),
        slow,
    )
    .await;
    let store = Store::open(&state.join("state.redb")).expect("state store");
    let loopback = "127.0.0.1:0".parse().unwrap();
    let server = Server::builder(registry)
        .store(store)
        .build()
        .await
        .expect("applications")
        .start(loopback, loopback)
        .await
        .expect("bind");
    let client = SluiceClient::connect(server.url()).await.expect("connect");
    Lab { client, server }
}

fn policy(kind: Kind) -> Option<proto::Policy> {
    Some(proto::Policy { kind: Some(kind) })
}

async fn register(lab: &mut Lab, name: &str, models: &[&str], slo_ms: u64, kind: Kind) {
    let application = proto::Application {
        name: name.into(),
        models: models.iter().map(|m| m.to_string()).collect(),
        slo_ms,
        output: "label".into(),
        kind: proto::application::Kind::Class as i32,
        default_output: Some(proto::Value {
            value: Some(proto::value::Value::ClassLabel(-1)),
        }),
        policy: policy(kind),
        confidence_threshold: 0.0,
        seed: 42,
    };
    lab.client
        .register_application(proto::RegisterApplicationRequest {
            application: Some(application),
        })
        .await
        .expect("register");
}

fn inputs(pixels: &[f32]) -> Vec<proto::Tensor> {
    vec![proto::Tensor {
        name: "pixels".into(),
        datatype: proto::DataType::Fp32 as i32,
        shape: vec![1, 64],
        data: pixels.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }]
}

fn label(answer: &proto::PredictAppResponse) -> i64 {
    match answer.predictions[0].value.as_ref().and_then(|v| v.value) {
        Some(proto::value::Value::ClassLabel(label)) => label,
        _ => -1,
    }
}

/// One query of a stream: the user, the (possibly masked) pixels and the true label.
struct Query {
    user: String,
    pixels: Vec<f32>,
    label: usize,
}

/// What a stream measured.
struct StreamResult {
    correct: Vec<bool>,
    feedback_micros: Vec<u64>,
}

/// Queries `app` with each query, then gives feedback; returns whether each answer was right.
async fn stream(lab: &mut Lab, app: &str, queries: &[Query], learn: bool) -> StreamResult {
    let mut result = StreamResult {
        correct: Vec::with_capacity(queries.len()),
        feedback_micros: Vec::new(),
    };
    for q in queries {
        let answer = lab
            .client
            .predict_app(proto::PredictAppRequest {
                app: app.into(),
                user_id: q.user.clone(),
                inputs: inputs(&q.pixels),
                bypass_cache: false,
            })
            .await
            .expect("PredictApp")
            .into_inner();
        result.correct.push(label(&answer) == q.label as i64);
        if learn {
            let started = Instant::now();
            lab.client
                .feedback(proto::FeedbackRequest {
                    app: app.into(),
                    user_id: q.user.clone(),
                    inputs: inputs(&q.pixels),
                    labels: vec![proto::Value {
                        value: Some(proto::value::Value::ClassLabel(q.label as i64)),
                    }],
                })
                .await
                .expect("Feedback");
            result
                .feedback_micros
                .push(started.elapsed().as_micros() as u64);
        }
    }
    result
}

fn accuracy(correct: &[bool]) -> f64 {
    correct.iter().filter(|&&c| c).count() as f64 / correct.len().max(1) as f64
}

fn rolling(correct: &[bool]) -> Vec<f64> {
    (0..correct.len())
        .map(|i| accuracy(&correct[i.saturating_sub(WINDOW - 1)..=i]))
        .collect()
}

/// The held-out digits in a fixed shuffled order, repeated to `n` queries.
fn order(digits: &Digits, n: usize) -> Vec<&Sample> {
    let mut indices: Vec<usize> = (0..digits.holdout.len()).collect();
    // A fixed permutation (multiplicative hashing), so every run streams the same order.
    indices.sort_by_key(|&i| (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32);
    (0..n)
        .map(|i| &digits.holdout[indices[i % indices.len()]])
        .collect()
}

/// A line chart of rolling accuracy, as SVG.
fn svg(title: &str, series: &[(String, Vec<f64>)], marker: Option<(usize, &str)>) -> String {
    const COLORS: [&str; 6] = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    let (width, height, left, top, plot_w, plot_h) = (760.0, 450.0, 60.0, 40.0, 660.0, 320.0);
    let n = series.iter().map(|s| s.1.len()).max().unwrap_or(1).max(2) as f64;
    let y_min = 0.2;
    let x = |i: f64| left + plot_w * i / (n - 1.0);
    let y = |v: f64| top + plot_h * (1.0 - (v - y_min) / (1.0 - y_min));
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>\n<text x=\"{left}\" y=\"24\" font-size=\"15\">{title}</text>\n"
    );
    for tick in [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0] {
        out += &format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{tick:.1}</text>\n",
            left + plot_w,
            left - 6.0,
            y(tick) + 4.0,
            y0 = y(tick)
        );
    }
    for tick in (0..=n as usize).step_by(200) {
        out += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{tick}</text>\n",
            x(tick as f64),
            top + plot_h + 16.0
        );
    }
    out += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">query (accuracy over the last {WINDOW})\
         </text>\n",
        left + plot_w / 2.0,
        top + plot_h + 34.0
    );
    if let Some((at, label)) = marker {
        out += &format!(
            "<line x1=\"{x0:.1}\" x2=\"{x0:.1}\" y1=\"{top}\" y2=\"{}\" stroke=\"#555\" \
             stroke-dasharray=\"4 3\"/><text x=\"{:.1}\" y=\"{}\">{label}</text>\n",
            top + plot_h,
            x(at as f64) + 4.0,
            top + 14.0,
            x0 = x(at as f64)
        );
    }
    for (k, (name, values)) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i as f64), y(v.max(y_min))))
            .collect();
        let legend_x = left + 135.0 * k as f64;
        out += &format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.6\" points=\"{}\"/>\n\
             <rect x=\"{legend_x:.1}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{}\">{name}</text>\n",
            points.join(" "),
            top + plot_h + 50.0,
            legend_x + 16.0,
            top + plot_h + 54.0,
        );
    }
    out + "</svg>\n"
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/selection".into()),
    );
    std::fs::create_dir_all(&out)?;
    let state = out.join("state");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state)?;
    let digits = Digits::load_default()?;
    let mut lab = start(&digits, &state).await;
    let mut report = serde_json::Map::new();

    // 1. Drift: the left half of every image goes blank half-way through.
    let models = ["digits-logreg", "digits-mlp", "digits-left-blind"];
    let drift_at = STREAM / 2;
    let drifting: Vec<Query> = order(&digits, STREAM)
        .into_iter()
        .enumerate()
        .map(|(i, s)| Query {
            user: String::new(),
            pixels: masked(
                &s.pixels,
                if i < drift_at {
                    Mask::None
                } else {
                    Mask::LeftHalf
                },
            ),
            label: s.label,
        })
        .collect();
    let policies = [
        (
            "static (mlp)",
            Kind::StaticModel(proto::policy::Static {
                model: "digits-mlp".into(),
            }),
        ),
        (
            "static (left-blind)",
            Kind::StaticModel(proto::policy::Static {
                model: "digits-left-blind".into(),
            }),
        ),
        (
            "epsilon-greedy",
            Kind::EpsilonGreedy(proto::policy::EpsilonGreedy { epsilon: None }),
        ),
        (
            "exp3",
            Kind::Exp3(proto::policy::Exp3 {
                eta: None,
                gamma: None,
            }),
        ),
        ("exp4", Kind::Exp4(proto::policy::Exp4 { eta: None })),
    ];
    let mut series = Vec::new();
    let mut feedback_micros = Vec::new();
    let mut drift = serde_json::Map::new();
    for (i, (name, kind)) in policies.into_iter().enumerate() {
        let app = format!("drift-{i}");
        register(&mut lab, &app, &models, 100, kind).await;
        let result = stream(&mut lab, &app, &drifting, true).await;
        let (before, after) = result.correct.split_at(drift_at);
        let settled = &after[after.len() / 2..];
        println!(
            "drift  {name:19} before {:.3}  after {:.3}  after, second half {:.3}",
            accuracy(before),
            accuracy(after),
            accuracy(settled)
        );
        drift.insert(
            name.into(),
            serde_json::json!({
                "before": accuracy(before),
                "after": accuracy(after),
                "after_second_half": accuracy(settled),
            }),
        );
        feedback_micros.extend(result.feedback_micros);
        series.push((name.to_string(), rolling(&result.correct)));
    }
    std::fs::write(
        out.join("selection-drift.svg"),
        svg(
            "Concept drift: the left half of each image goes blank at query 800",
            &series,
            Some((drift_at, "drift")),
        ),
    )?;
    report.insert("drift".into(), drift.into());
    feedback_micros.sort_unstable();
    println!(
        "feedback (durable) p50 {:.2} ms  p99 {:.2} ms",
        percentile(&feedback_micros, 0.5),
        percentile(&feedback_micros, 0.99)
    );
    report.insert(
        "feedback_ms".into(),
        serde_json::json!({
            "p50": percentile(&feedback_micros, 0.5),
            "p99": percentile(&feedback_micros, 0.99),
            "count": feedback_micros.len(),
        }),
    );

    // 2. Stragglers: an ensemble with a slow member, at a tight and a loose SLO.
    let ensemble = [
        "digits-logreg",
        "digits-mlp",
        "digits-left-blind",
        "digits-slow",
    ];
    let mut stragglers = serde_json::Map::new();
    for slo_ms in [10, 100] {
        let app = format!("ensemble-{slo_ms}ms");
        register(
            &mut lab,
            &app,
            &ensemble,
            slo_ms,
            Kind::Exp4(proto::policy::Exp4 { eta: None }),
        )
        .await;
        let mut latencies = Vec::new();
        let mut correct = Vec::new();
        let mut answered = 0;
        for s in &digits.holdout {
            let started = Instant::now();
            let answer = lab
                .client
                .predict_app(proto::PredictAppRequest {
                    app: app.clone(),
                    user_id: String::new(),
                    inputs: inputs(&s.pixels),
                    bypass_cache: true,
                })
                .await?
                .into_inner();
            latencies.push(started.elapsed().as_micros() as u64);
            answered += answer.models_answered.len();
            correct.push(label(&answer) == s.label as i64);
        }
        latencies.sort_unstable();
        let mean_answered = answered as f64 / digits.holdout.len() as f64;
        println!(
            "slo {slo_ms:3} ms  accuracy {:.4}  models answering {mean_answered:.2}/4  \
             p50 {:.2} ms  p99 {:.2} ms",
            accuracy(&correct),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99)
        );
        stragglers.insert(
            format!("{slo_ms}ms"),
            serde_json::json!({
                "accuracy": accuracy(&correct),
                "models_answering": mean_answered,
                "p50_ms": percentile(&latencies, 0.5),
                "p99_ms": percentile(&latencies, 0.99),
            }),
        );
    }
    report.insert("stragglers".into(), stragglers.into());

    // 3. Personalization: even users' images lack the left half, odd users' the right half.
    let users = 10;
    let personal_models = ["digits-logreg", "digits-left-blind", "digits-right-blind"];
    let queries: Vec<Query> = order(&digits, STREAM)
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let user = i % users;
            let mask = if user % 2 == 0 {
                Mask::LeftHalf
            } else {
                Mask::RightHalf
            };
            Query {
                user: format!("user-{user}"),
                pixels: masked(&s.pixels, mask),
                label: s.label,
            }
        })
        .collect();
    let anonymous: Vec<Query> = queries
        .iter()
        .map(|q| Query {
            user: String::new(),
            pixels: q.pixels.clone(),
            label: q.label,
        })
        .collect();
    let mut personal = serde_json::Map::new();
    let mut personal_series = Vec::new();
    for (policy_name, kind) in [
        (
            "exp3",
            Kind::Exp3(proto::policy::Exp3 {
                eta: None,
                gamma: None,
            }),
        ),
        ("exp4", Kind::Exp4(proto::policy::Exp4 { eta: None })),
    ] {
        for (scope, stream_queries) in [("global", &anonymous), ("per user", &queries)] {
            let app = format!("personal-{policy_name}-{}", scope.replace(' ', "-"));
            register(&mut lab, &app, &personal_models, 100, kind.clone()).await;
            let result = stream(&mut lab, &app, stream_queries, true).await;
            let tail = &result.correct[STREAM / 2..];
            println!(
                "personal {policy_name} {scope:8} accuracy {:.3}  second half {:.3}",
                accuracy(&result.correct),
                accuracy(tail)
            );
            personal.insert(
                format!("{policy_name} {scope}"),
                serde_json::json!({
                    "accuracy": accuracy(&result.correct),
                    "second_half": accuracy(tail),
                }),
            );
            personal_series.push((format!("{policy_name}, {scope}"), rolling(&result.correct)));
        }
    }
    std::fs::write(
        out.join("selection-personal.svg"),
        svg(
            "Personalization: half the users lack the left half of each image, half the right",
            &personal_series,
            None,
        ),
    )?;
    report.insert("personalization".into(), personal.into());
    std::fs::write(
        out.join("selection.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    lab.server.shutdown().await?;
    println!("wrote {}", out.display());
    Ok(())
}
