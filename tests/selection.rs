//! Applications over real gRPC: policies choosing among real digits models, feedback moving
//! their weights, stragglers left out of an ensemble at the deadline, default outputs, the
//! prediction cache, per-user state, and clear errors for bad requests.

use crate::support::{TestServer, fp32};
use serde_json::{Value, json};
use sluice_api::inference::{self, grpc_inference_service_client::GrpcInferenceServiceClient};
use sluice_api::proto::{self, policy::Kind};
use sluice_samples::SAMPLE_MODELS;
use sluice_sdk::params::{self, Param};
use sluice_serving::ModelLimits;
use sluice_serving::batching::{BatchMode, BatchingConfig};
use sluice_serving::registry::LoadRequest;
use sluice_train::{Digits, Sample};
use std::time::Duration;
use tonic::Code;

/// How long the slow model's replica waits for a fuller batch: it always misses a 100 ms SLO.
const SLOW_DELAY: Duration = Duration::from_millis(400);

/// Loads a bundled sample under another name, with other parameters or batching.
async fn load_variant(
    server: &TestServer,
    sample: &str,
    name: &str,
    config: Vec<u8>,
    batching: BatchingConfig,
) {
    let sample = SAMPLE_MODELS.iter().find(|m| m.name == sample).unwrap();
    server
        .registry
        .load(LoadRequest {
            component: sample.component.to_vec(),
            config,
            graphs: Vec::new(),
            name: Some(name.to_string()),
            version: None,
            replicas: 1,
            autoscale: None,
            limits: ModelLimits::default(),
            batching,
        })
        .await
        .expect("load a variant");
}

/// The logistic regression with its classes rotated: it answers (true label + 1) mod 10
/// wherever the real one is right, so it is wrong on nearly every digit.
pub(crate) fn rotated_logreg_config() -> Vec<u8> {
    let sample = SAMPLE_MODELS
        .iter()
        .find(|m| m.name == "digits-logreg")
        .unwrap();
    let rotated: Vec<Param> = params::decode(sample.config)
        .unwrap()
        .into_iter()
        .map(|mut p| {
            // Column c of the rotated model is column c-1 of the real one.
            let classes = *p.shape.last().unwrap() as usize;
            for row in p.values.chunks_exact_mut(classes) {
                row.rotate_right(1);
            }
            p
        })
        .collect();
    params::encode(&rotated)
}

/// A server with digits-logreg, digits-mlp, digits-rotated (always wrong) and digits-slow
/// (the MLP behind a 400 ms batching delay).
async fn server() -> TestServer {
    let server = TestServer::with_samples().await;
    load_variant(
        &server,
        "digits-logreg",
        "digits-rotated",
        rotated_logreg_config(),
        BatchingConfig::default(),
    )
    .await;
    let mlp = SAMPLE_MODELS
        .iter()
        .find(|m| m.name == "digits-mlp")
        .unwrap();
    load_variant(
        &server,
        "digits-mlp",
        "digits-slow",
        mlp.config.to_vec(),
        BatchingConfig {
            mode: BatchMode::Static { size: 64 },
            slo: Duration::from_secs(5),
            max_delay: Some(SLOW_DELAY),
        },
    )
    .await;
    server
}

pub(crate) fn application(
    name: &str,
    models: &[&str],
    slo_ms: u64,
    kind: Kind,
) -> proto::Application {
    proto::Application {
        name: name.into(),
        models: models.iter().map(|m| m.to_string()).collect(),
        slo_ms,
        output: "label".into(),
        kind: proto::application::Kind::Class as i32,
        default_output: Some(class(-1)),
        policy: Some(proto::Policy { kind: Some(kind) }),
        confidence_threshold: 0.0,
        seed: 7,
    }
}

pub(crate) fn exp4() -> Kind {
    Kind::Exp4(proto::policy::Exp4 { eta: Some(0.5) })
}

pub(crate) fn class(label: i64) -> proto::Value {
    proto::Value {
        value: Some(proto::value::Value::ClassLabel(label)),
    }
}

fn pixels(sample: &Sample) -> Vec<proto::Tensor> {
    vec![fp32("pixels", &[1, 64], &sample.pixels)]
}

pub(crate) async fn register(server: &mut TestServer, app: proto::Application) {
    server
        .client
        .register_application(proto::RegisterApplicationRequest {
            application: Some(app),
        })
        .await
        .expect("register");
}

pub(crate) async fn predict_app(
    server: &mut TestServer,
    app: &str,
    user: &str,
    sample: &Sample,
) -> proto::PredictAppResponse {
    server
        .client
        .predict_app(proto::PredictAppRequest {
            app: app.into(),
            user_id: user.into(),
            inputs: pixels(sample),
            bypass_cache: false,
        })
        .await
        .expect("PredictApp")
        .into_inner()
}

pub(crate) async fn feedback(
    server: &mut TestServer,
    app: &str,
    user: &str,
    sample: &Sample,
) -> proto::FeedbackResponse {
    server
        .client
        .feedback(proto::FeedbackRequest {
            app: app.into(),
            user_id: user.into(),
            inputs: pixels(sample),
            labels: vec![class(sample.label as i64)],
        })
        .await
        .expect("Feedback")
        .into_inner()
}

pub(crate) async fn selection_state(
    server: &mut TestServer,
    app: &str,
    user: &str,
) -> proto::SelectionState {
    let request = proto::GetSelectionStateRequest {
        app: app.into(),
        user_id: user.into(),
    };
    let response = server.client.get_selection_state(request).await;
    response
        .expect("GetSelectionState")
        .into_inner()
        .state
        .unwrap()
}

pub(crate) fn weight(state: &proto::SelectionState, model: &str) -> f64 {
    state.arms.iter().find(|a| a.model == model).unwrap().weight
}

fn label_of(prediction: &proto::RowPrediction) -> i64 {
    match prediction.value.as_ref().and_then(|v| v.value) {
        Some(proto::value::Value::ClassLabel(label)) => label,
        other => panic!("not a class label: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exp4_feedback_moves_weight_to_the_right_model() {
    let mut server = server().await;
    let digits = Digits::load_default().unwrap();
    register(
        &mut server,
        application("vote", &["digits-logreg", "digits-rotated"], 1000, exp4()),
    )
    .await;
    let first = &digits.holdout[0];
    let answer = predict_app(&mut server, "vote", "", first).await;
    assert_eq!(answer.models_answered.len(), 2, "{answer:?}");
    assert!(
        (answer.predictions[0].confidence - 0.5).abs() < 1e-9,
        "equal weights, disagreeing models: {answer:?}"
    );
    let mut last = None;
    for sample in &digits.holdout[..10] {
        let outcome = feedback(&mut server, "vote", "", sample).await;
        last = outcome.state;
    }
    let state = last.unwrap();
    assert_eq!(state.feedback_count, 10);
    assert_eq!(weight(&state, "digits-logreg"), 1.0);
    // Each weight is exp(-eta * its total loss), scaled so the largest is 1.
    let total_loss = |m: &str| {
        let arm = state.arms.iter().find(|a| a.model == m).unwrap();
        arm.mean_loss * arm.observations as f64
    };
    let (right, wrong) = (total_loss("digits-logreg"), total_loss("digits-rotated"));
    assert_eq!(
        wrong, 10.0,
        "the rotated model is wrong on every digit: {state:?}"
    );
    assert!(
        (weight(&state, "digits-rotated") - (-0.5 * (wrong - right)).exp()).abs() < 1e-9,
        "{state:?}"
    );
    let answer = predict_app(&mut server, "vote", "", &digits.holdout[20]).await;
    assert_eq!(
        label_of(&answer.predictions[0]),
        digits.holdout[20].label as i64
    );
    let expected = 1.0 / (1.0 + weight(&state, "digits-rotated"));
    assert!(
        (answer.predictions[0].confidence - expected).abs() < 1e-9,
        "the logreg's share of the weight: {answer:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exp3_asks_one_model_and_learns_about_the_one_it_asked() {
    let mut server = server().await;
    let digits = Digits::load_default().unwrap();
    let exp3 = Kind::Exp3(proto::policy::Exp3 {
        eta: Some(0.5),
        gamma: Some(0.1),
    });
    register(
        &mut server,
        application("bandit", &["digits-logreg", "digits-rotated"], 1000, exp3),
    )
    .await;
    for sample in &digits.holdout[..40] {
        let answer = predict_app(&mut server, "bandit", "", sample).await;
        assert_eq!(answer.models_queried.len(), 1, "{answer:?}");
        let outcome = feedback(&mut server, "bandit", "", sample).await;
        assert_eq!(
            outcome.chosen, answer.models_queried,
            "feedback is joined with the model that answered"
        );
    }
    let state = selection_state(&mut server, "bandit", "").await;
    let arm = |m: &str| state.arms.iter().find(|a| a.model == m).unwrap().clone();
    assert!(
        arm("digits-logreg").probability > 0.8,
        "after 40 rounds the right model is drawn most: {state:?}"
    );
    assert!(arm("digits-rotated").mean_loss > 0.9, "{state:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stragglers_are_left_out_and_their_late_answers_cached() {
    let mut server = server().await;
    let digits = Digits::load_default().unwrap();
    register(
        &mut server,
        application("fast", &["digits-logreg", "digits-slow"], 100, exp4()),
    )
    .await;
    let sample = &digits.holdout[3];
    let answer = predict_app(&mut server, "fast", "", sample).await;
    assert_eq!(answer.models_answered, vec!["digits-logreg"]);
    assert_eq!(answer.missing.len(), 1, "{answer:?}");
    assert_eq!(answer.missing[0].model, "digits-slow");
    assert!(
        answer.missing[0]
            .reason
            .contains("no answer within the 100 ms SLO"),
        "{answer:?}"
    );
    assert!(!answer.predictions[0].default);
    assert_eq!(label_of(&answer.predictions[0]), sample.label as i64);
    // The straggler finishes after the reply; its answer lands in the cache.
    tokio::time::sleep(SLOW_DELAY * 2).await;
    let again = predict_app(&mut server, "fast", "", sample).await;
    assert!(again.missing.is_empty(), "{again:?}");
    assert_eq!(again.cache_hits, 2, "both answers come from the cache");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impossible_slo_and_low_confidence_give_the_default_output() {
    let mut server = server().await;
    let digits = Digits::load_default().unwrap();
    register(
        &mut server,
        application("hopeless", &["digits-slow"], 1, exp4()),
    )
    .await;
    let answer = predict_app(&mut server, "hopeless", "", &digits.holdout[0]).await;
    assert!(answer.default, "{answer:?}");
    assert_eq!(label_of(&answer.predictions[0]), -1);
    assert!(
        answer
            .default_reason
            .contains("no answer within the 1 ms SLO"),
        "{answer:?}"
    );
    let mut unsure = application("unsure", &["digits-logreg", "digits-rotated"], 1000, exp4());
    unsure.confidence_threshold = 0.9;
    register(&mut server, unsure).await;
    let answer = predict_app(&mut server, "unsure", "", &digits.holdout[0]).await;
    assert!(answer.predictions[0].default, "{answer:?}");
    assert!(
        answer
            .default_reason
            .contains("below the application's threshold 0.9"),
        "{answer:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_answers_repeats_unless_bypassed() {
    let mut server = server().await;
    let digits = Digits::load_default().unwrap();
    register(
        &mut server,
        application("cached", &["digits-logreg", "digits-mlp"], 1000, exp4()),
    )
    .await;
    let sample = &digits.holdout[5];
    assert_eq!(
        predict_app(&mut server, "cached", "", sample)
            .await
            .cache_hits,
        0
    );
    assert_eq!(
        predict_app(&mut server, "cached", "", sample)
            .await
            .cache_hits,
        2
    );
    let bypass = server
        .client
        .predict_app(proto::PredictAppRequest {
            app: "cached".into(),
            user_id: String::new(),
            inputs: pixels(sample),
            bypass_cache: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bypass.cache_hits, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_has_its_own_state() {
    let mut server = server().await;
    let digits = Digits::load_default().unwrap();
    register(
        &mut server,
        application(
            "personal",
            &["digits-logreg", "digits-rotated"],
            1000,
            exp4(),
        ),
    )
    .await;
    for sample in &digits.holdout[..3] {
        feedback(&mut server, "personal", "alice", sample).await;
    }
    for (user, count) in [("alice", 3), ("bob", 0), ("", 0)] {
        let state = selection_state(&mut server, "personal", user).await;
        assert_eq!(state.feedback_count, count, "user `{user}`");
    }
    server
        .client
        .reset_selection_state(proto::ResetSelectionStateRequest {
            app: "personal".into(),
            user_id: "alice".into(),
            all_users: false,
        })
        .await
        .unwrap();
    let alice = selection_state(&mut server, "personal", "alice").await;
    assert_eq!(alice.feedback_count, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_errors_that_name_the_problem() {
    let mut server = server().await;
    let digits = Digits::load_default().unwrap();
    let sample = &digits.holdout[0];
    register(&mut server, application("empty", &[], 100, exp4())).await;
    let mut cases: Vec<(tonic::Status, Code, &str)> = Vec::new();
    let unknown = server
        .client
        .predict_app(proto::PredictAppRequest {
            app: "nope".into(),
            inputs: pixels(sample),
            ..Default::default()
        })
        .await
        .unwrap_err();
    cases.push((unknown, Code::NotFound, "application `nope`"));
    // Each distinct user may cost a state: a 16 MiB user id is refused, not kept.
    let huge_user = server
        .client
        .predict_app(proto::PredictAppRequest {
            app: "empty".into(),
            user_id: "u".repeat(16 << 20),
            inputs: pixels(sample),
            ..Default::default()
        })
        .await
        .unwrap_err();
    cases.push((
        huge_user,
        Code::InvalidArgument,
        "a user id has at most 256",
    ));
    let no_models = server
        .client
        .feedback(proto::FeedbackRequest {
            app: "empty".into(),
            inputs: pixels(sample),
            labels: vec![class(1)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    cases.push((no_models, Code::FailedPrecondition, "no linked models"));
    let link = |model: &str| proto::LinkModelRequest {
        app: "empty".into(),
        model: model.into(),
    };
    let missing_model = server.client.link_model(link("ghost")).await.unwrap_err();
    cases.push((missing_model, Code::NotFound, "model `ghost`"));
    server
        .client
        .link_model(link("digits-logreg"))
        .await
        .unwrap();
    let twice = server
        .client
        .link_model(link("digits-logreg"))
        .await
        .unwrap_err();
    cases.push((twice, Code::AlreadyExists, "already linked"));
    let wrong_type = server
        .client
        .feedback(proto::FeedbackRequest {
            app: "empty".into(),
            inputs: pixels(sample),
            labels: vec![proto::Value {
                value: Some(proto::value::Value::Number(1.5)),
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    cases.push((wrong_type, Code::InvalidArgument, "labels[0]"));
    let too_few = server
        .client
        .feedback(proto::FeedbackRequest {
            app: "empty".into(),
            inputs: pixels(sample),
            labels: vec![],
            ..Default::default()
        })
        .await
        .unwrap_err();
    cases.push((
        too_few,
        Code::InvalidArgument,
        "labels: 0 labels for 1 input rows",
    ));
    let mut no_output = application("no-output", &["digits-logreg"], 100, exp4());
    no_output.output = "score".into();
    let no_output = server
        .client
        .register_application(proto::RegisterApplicationRequest {
            application: Some(no_output),
        })
        .await
        .unwrap_err();
    cases.push((no_output, Code::InvalidArgument, "has no output `score`"));
    let duplicate = server
        .client
        .register_application(proto::RegisterApplicationRequest {
            application: Some(application("empty", &[], 100, exp4())),
        })
        .await
        .unwrap_err();
    cases.push((duplicate, Code::AlreadyExists, "already registered"));
    let mut no_slo = application("no-slo", &[], 0, exp4());
    no_slo.slo_ms = 0;
    let no_slo = server
        .client
        .register_application(proto::RegisterApplicationRequest {
            application: Some(no_slo),
        })
        .await
        .unwrap_err();
    cases.push((no_slo, Code::InvalidArgument, "slo_ms"));
    let wrong_shape = server
        .client
        .predict_app(proto::PredictAppRequest {
            app: "empty".into(),
            inputs: vec![fp32("pixels", &[1, 3], &[0.0; 3])],
            ..Default::default()
        })
        .await
        .unwrap_err();
    cases.push((
        wrong_shape,
        Code::InvalidArgument,
        "inputs: invalid request for model",
    ));
    for (status, code, needle) in cases {
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(
            status.message().contains(needle),
            "`{}` should mention `{needle}`",
            status.message()
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_applications_is_an_admin_call() {
    let mut server = TestServer::start(|server| server.admin_token(Some("secret".into()))).await;
    let refused = server
        .client
        .register_application(proto::RegisterApplicationRequest {
            application: Some(application("a", &[], 100, exp4())),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let listed = server
        .client
        .list_applications(proto::ListApplicationsRequest {})
        .await
        .unwrap();
    assert!(listed.into_inner().applications.is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kserve_and_rest_clients_reach_applications_by_name() {
    let mut server = server().await;
    let digits = Digits::load_default().unwrap();
    register(
        &mut server,
        application("digits", &["digits-logreg", "digits-slow"], 100, exp4()),
    )
    .await;
    let sample = &digits.holdout[7];
    // KServe v2 over gRPC: the application's name in place of a model's.
    let mut kserve = GrpcInferenceServiceClient::new(server.channel().await);
    let user = inference::InferParameter {
        parameter_choice: Some(inference::infer_parameter::ParameterChoice::StringParam(
            "carol".into(),
        )),
    };
    let response = kserve
        .model_infer(inference::ModelInferRequest {
            model_name: "digits".into(),
            inputs: vec![inference::model_infer_request::InferInputTensor {
                name: "pixels".into(),
                datatype: "FP32".into(),
                shape: vec![1, 64],
                ..Default::default()
            }],
            raw_input_contents: vec![sample.pixels.iter().flat_map(|v| v.to_le_bytes()).collect()],
            parameters: [("user_id".to_string(), user)].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = response.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["label", "confidence", "default"]);
    let metadata = kserve
        .model_metadata(inference::ModelMetadataRequest {
            name: "digits".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        metadata.inputs[0].name, "pixels",
        "the linked models' inputs"
    );
    let datatypes: Vec<&str> = metadata
        .outputs
        .iter()
        .map(|o| o.datatype.as_str())
        .collect();
    assert_eq!(datatypes, ["INT64", "FP64", "BOOL"]);
    let ready = kserve
        .model_ready(inference::ModelReadyRequest {
            name: "digits".into(),
            version: String::new(),
        })
        .await
        .unwrap();
    assert!(ready.into_inner().ready);
    let label = i64::from_le_bytes(response.raw_output_contents[0][..8].try_into().unwrap());
    assert_eq!(label, sample.label as i64);
    assert_eq!(response.raw_output_contents[2], vec![0], "not a default");
    let missing = &response.parameters["missing"].parameter_choice;
    assert!(
        format!("{missing:?}").contains("digits-slow: no answer within the 100 ms SLO"),
        "{missing:?}"
    );
    // The sluice application API in JSON over HTTP, on the same server's applications.
    let url = server.http_url();
    let body = json!({
        "user_id": "carol",
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": sample.pixels}],
        "labels": [sample.label],
    });
    let http = reqwest::Client::new();
    let answer: Value = http
        .post(format!("{url}/sluice/v1/apps/digits/predict"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["predictions"][0]["value"], json!(sample.label));
    let learned = http
        .post(format!("{url}/sluice/v1/apps/digits/feedback"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(learned.status(), 200);
    let learned: Value = learned.json().await.unwrap();
    assert_eq!(learned["state"]["feedback_count"], 1);
    assert_eq!(learned["losses"]["digits-logreg"], 0.0);
    let state: Value = http
        .get(format!("{url}/sluice/v1/apps/digits/users/carol/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["feedback_count"], 1);
    let wrong = http
        .post(format!("{url}/sluice/v1/apps/digits/feedback"))
        .json(&json!({"inputs": body["inputs"], "labels": [0.5]}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 400);
    let error: Value = wrong.json().await.unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("labels[0]"),
        "{error}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_keeps_a_bounded_number_of_user_states() {
    let mut server = TestServer::start(|server| server.max_user_states(3))
        .await
        .load_samples()
        .await;
    let digits = Digits::load_default().unwrap();
    register(
        &mut server,
        application("bounded", &["digits-logreg", "digits-mlp"], 1000, exp4()),
    )
    .await;
    let users: Vec<String> = (0..6).map(|i| format!("user-{i}")).collect();
    for user in &users {
        feedback(&mut server, "bounded", user, &digits.holdout[0]).await;
    }
    let mut counts = Vec::new();
    for user in &users {
        counts.push(
            selection_state(&mut server, "bounded", user)
                .await
                .feedback_count,
        );
    }
    // The three updated least recently gave way to the three newest.
    assert_eq!(counts, [0, 0, 0, 1, 1, 1]);
    let shared = selection_state(&mut server, "bounded", "").await;
    assert_eq!(shared.feedback_count, 0, "per-user feedback stays per user");
    server.shutdown().await;
}
