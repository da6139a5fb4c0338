//! Loading and unloading models over gRPC: good components load from bytes or from a path;
//! files that are not components, or components that do not implement the model world, are
//! refused with a message saying what is missing; admin calls need loopback or the token.

use crate::support::{TestServer, digits_request, sample_component};
use sluice_api::proto::{LoadModelRequest, UnloadModelRequest, load_model_request::Component};
use sluice_train::Digits;
use tonic::Code;

fn load(component: Component, config: &[u8], name: &str) -> LoadModelRequest {
    LoadModelRequest {
        component: Some(component),
        config: config.to_vec(),
        name: name.to_string(),
        replicas: 1,
        ..LoadModelRequest::default()
    }
}

fn logreg_config() -> Vec<u8> {
    std::fs::read(sluice_train::params_path("digits-logreg")).unwrap()
}

#[tokio::test]
async fn bad_files_are_refused_with_the_reason() {
    let mut server = TestServer::start(|server| server).await;
    let empty_component = b"\0asm\x0d\0\x01\0".to_vec();
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let cases = [
        (b"not wasm at all".to_vec(), "not a WebAssembly component"),
        (core_module, "core WebAssembly module"),
        (
            empty_component,
            "does not implement `sluice:model/predictor@0.1.0`: it exports nothing",
        ),
        // A real component, but a WASI command rather than a model.
        (
            sample_component("wasi_hello"),
            "does not implement `sluice:model/predictor@0.1.0`: it exports only wasi:cli/run@0.2",
        ),
        // A model that also imports an interface the host does not provide.
        (
            sample_component("unknown_import"),
            "the host does not provide: component imports instance `test:unknown/secrets",
        ),
    ];
    for (bytes, message) in cases {
        let status = server
            .client
            .load_model(load(Component::Wasm(bytes), b"", ""))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(
            status.message().contains(message),
            "{:?} should contain {message:?}",
            status.message()
        );
    }
    let status = server
        .client
        .load_model(load(Component::Path("/no/such/file.wasm".into()), b"", ""))
        .await
        .unwrap_err();
    assert!(
        status
            .message()
            .contains("path: cannot read `/no/such/file.wasm`"),
        "{}",
        status.message()
    );
    let status = server
        .client
        .load_model(LoadModelRequest::default())
        .await
        .unwrap_err();
    assert!(
        status.message().starts_with("component:"),
        "{}",
        status.message()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn load_predict_unload_round_trip() {
    let mut server = TestServer::start(|server| server).await;
    let digits = Digits::load_default().unwrap();
    let path = format!("{}/digits_logreg.wasm", sluice_samples::SAMPLE_WASM_DIR);
    let loaded = server
        .client
        .load_model(load(Component::Path(path), &logreg_config(), "from-path"))
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert_eq!(
        (loaded.name.as_str(), loaded.version.as_str()),
        ("from-path", "1")
    );
    server
        .client
        .load_model(load(
            Component::Wasm(sample_component("digits_logreg")),
            &logreg_config(),
            "",
        ))
        .await
        .unwrap();
    let listed = server.models().await;
    let names: Vec<&str> = listed.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["digits-logreg", "from-path"]);

    let sample = &digits.holdout[..3];
    for model in ["from-path", "digits-logreg"] {
        server
            .client
            .predict(digits_request(model, sample))
            .await
            .unwrap();
    }
    let unloaded = server
        .client
        .unload_model(UnloadModelRequest {
            name: "from-path".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unloaded.versions, ["1"]);
    let status = server
        .client
        .predict(digits_request("from-path", sample))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = server
        .client
        .unload_model(UnloadModelRequest {
            name: "from-path".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    server.shutdown().await;
}

#[tokio::test]
async fn admin_calls_need_the_token_when_one_is_set() {
    let mut server = TestServer::start(|server| server.admin_token(Some("s3cret".into()))).await;
    let request = || {
        load(
            Component::Wasm(sample_component("digits_logreg")),
            &logreg_config(),
            "",
        )
    };
    let status = server.client.load_model(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(request());
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer guess".parse().unwrap());
    assert_eq!(
        server.client.load_model(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut right = tonic::Request::new(request());
    right
        .metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    server.client.load_model(right).await.unwrap();
    // Predicting needs no token.
    server.predicts_a_digit("digits-logreg").await;
    server.shutdown().await;
}

#[tokio::test]
async fn models_recorded_by_an_earlier_version_are_restored_and_recorded_anew() {
    use prost::Message;
    use sluice_serving::lifecycle::LoadRecord;
    use sluice_serving::store::Store;
    let dir = std::path::Path::new(crate::support::CACHE).join("earlier-records");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&dir.join("state.redb")).unwrap();
    // What sluice recorded before its load records were its own: the request, as protobuf.
    let mut earlier = load(
        Component::Wasm(sample_component("digits_logreg")),
        &logreg_config(),
        "earlier",
    );
    earlier.version = "7".into();
    store
        .put_model("earlier", "7", earlier.encode_to_vec())
        .await
        .unwrap();
    for _ in 0..2 {
        let registry =
            crate::support::registry_on(sluice_runtime::RuntimeConfig::default().compute);
        let server = crate::support::builder(&registry)
            .store(store.clone())
            .build()
            .await
            .unwrap();
        let restored = server.restore().await.unwrap();
        assert_eq!(restored.loaded, ["earlier@7"], "{:?}", restored.failed);
        assert!(registry.get("earlier", Some("7")).is_ok());
        // Recorded anew in the lifecycle's format, which the second round restores from.
        let record = store.model("earlier", "7").await.unwrap().unwrap();
        let record: LoadRecord = serde_json::from_slice(&record).unwrap();
        assert_eq!(record.replicas, 1);
    }
}

/// A path on the server must name a regular file of at most 64 MiB: a FIFO would block the
/// load for ever, and a huge file would be read whole into memory.
#[tokio::test]
async fn a_path_must_be_a_regular_file_within_the_limit() {
    let dir = std::path::Path::new(crate::support::CACHE).join("load-paths");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("component.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo");
    let huge = dir.join("huge.wasm");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len((64 << 20) + 1)
        .unwrap();
    let mut server = TestServer::start(|server| server).await;
    for (path, expected) in [
        (&fifo, "is not a regular file"),
        (&huge, "is 67108865 bytes, over the limit of 67108864"),
    ] {
        let request = load(
            Component::Path(path.display().to_string()),
            &logreg_config(),
            "from-path",
        );
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            server.client.load_model(request),
        )
        .await
        .expect("the load answers at once");
        let status = answer.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(expected), "{}", status.message());
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_load_whose_client_gave_up_still_ends_failed_not_loading() {
    use sluice_api::proto::{ModelLimits, model_status::State};
    let mut server = TestServer::start(|server| server).await;
    let mut request = tonic::Request::new(LoadModelRequest {
        version: "1".into(),
        limits: Some(ModelLimits {
            call_timeout_ms: 1000,
            ..ModelLimits::default()
        }),
        ..load(
            Component::Wasm(sample_component("faulty")),
            b"init-loop",
            "stuck",
        )
    });
    request.set_timeout(std::time::Duration::from_millis(200));
    let status = server.client.load_model(request).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    // The load goes on without its client until init's time limit ends it.
    let mut polls = 0;
    let stuck = loop {
        let models = server.models().await;
        let stuck = models.into_iter().find(|m| m.name == "stuck").unwrap();
        if stuck.state() != State::Loading {
            break stuck;
        }
        polls += 1;
        assert!(polls < 300, "still LOADING 30 s after init's 1 s limit");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(stuck.state(), State::Failed);
    assert!(stuck.reason.contains("time limit"), "{}", stuck.reason);
    server.shutdown().await;
}

#[tokio::test]
async fn a_scale_beyond_the_hosts_instances_is_refused_and_changes_nothing() {
    use sluice_api::proto::ScaleModelRequest;
    let mut server = TestServer::with_samples().await;
    let before = server.model("digits-logreg").await.replicas;
    let status = server
        .client
        .scale_model(ScaleModelRequest {
            name: "digits-logreg".into(),
            version: String::new(),
            replicas: 20_000,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("over its limit of 4096"),
        "{}",
        status.message()
    );
    assert_eq!(server.model("digits-logreg").await.replicas, before);
    server.predicts_a_digit("digits-logreg").await;
    server.shutdown().await;
}

/// Versions whose component bytes are equal share one compiled component, whatever their
/// parameters: two variants of the logistic regression (its own classes, and rotated by one)
/// answer differently from one copy of the code, which leaves memory with the last of them.
#[tokio::test]
async fn variants_of_one_component_share_its_compiled_code() {
    let mut server = TestServer::start(|server| server).await;
    let digits = Digits::load_default().unwrap();
    let component = sample_component("digits_logreg");
    for (name, config) in [
        ("variant-a", logreg_config()),
        ("variant-b", crate::selection::rotated_logreg_config()),
    ] {
        server
            .client
            .load_model(load(Component::Wasm(component.clone()), &config, name))
            .await
            .unwrap();
    }
    let runtime = server.registry.runtime().clone();
    assert_eq!(
        runtime.components_prepared(),
        1,
        "the second variant shares the first's code"
    );
    assert_eq!(runtime.resident_components(), 1);
    let mut labels = Vec::new();
    for name in ["variant-a", "variant-b"] {
        let answer = server
            .client
            .predict(digits_request(name, &digits.holdout[..1]))
            .await
            .unwrap()
            .into_inner();
        labels.push(crate::support::i64_values(crate::support::output(&answer, "label"))[0]);
    }
    assert_eq!(
        labels[1],
        (labels[0] + 1) % 10,
        "each variant has its own parameters"
    );
    for name in ["variant-a", "variant-b"] {
        server
            .client
            .unload_model(UnloadModelRequest {
                name: name.into(),
                version: String::new(),
            })
            .await
            .unwrap();
    }
    let started = std::time::Instant::now();
    while runtime.resident_components() > 0 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the compiled component stayed in memory after its last model was unloaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
