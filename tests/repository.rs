//! The model repository and versions: new versions switch in under load with no failed
//! request, rollback is atomic, a broken version never replaces a working one, a removed
//! version finishes its requests, the directory is watched, and version policies apply.

use crate::support::{TestServer, digits_request, sample_component};
use sluice_api::proto::{
    LoadModelRequest, SetDefaultVersionRequest, load_model_request::Component,
};
use sluice_serving::ModelLimits;
use sluice_serving::batching::BatchingConfig;
use sluice_serving::repository::Repository;
use sluice_train::Digits;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::Code;

use crate::support::CACHE;

/// A fresh, empty repository directory for one test.
fn repo_dir(test: &str) -> PathBuf {
    let dir = Path::new(CACHE).join("repositories").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `dir/logreg/<version>/` with the logreg component, its parameters and a config.toml.
fn add_logreg(dir: &Path, version: &str) {
    let version_dir = dir.join("logreg").join(version);
    std::fs::create_dir_all(&version_dir).unwrap();
    std::fs::write(
        version_dir.join("model.wasm"),
        sample_component("digits_logreg"),
    )
    .unwrap();
    std::fs::copy(
        sluice_train::params_path("digits-logreg"),
        version_dir.join("params.slpm"),
    )
    .unwrap();
    std::fs::write(
        version_dir.join("config.toml"),
        "config = \"params.slpm\"\nreplicas = 2\n",
    )
    .unwrap();
}

async fn start(dir: &Path) -> (TestServer, Arc<Repository>) {
    let server = TestServer::start(|server| server).await;
    let repository = Arc::new(Repository::new(
        dir.to_path_buf(),
        server.registry.clone(),
        ModelLimits::default(),
        BatchingConfig::default(),
    ));
    repository.sync().await.unwrap();
    (server, repository)
}

/// Clients that predict on `logreg` (no version) until told to stop; they return the versions
/// that answered, in order, and fail the test on any error.
fn clients(
    server: &TestServer,
    count: usize,
) -> (
    Arc<std::sync::atomic::AtomicBool>,
    Vec<tokio::task::JoinHandle<Vec<String>>>,
) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let digits = Digits::load_default().unwrap();
    let handles = (0..count)
        .map(|c| {
            let mut client = server.client.clone();
            let stop = stop.clone();
            let rows = digits.holdout[c..c + 1].to_vec();
            tokio::spawn(async move {
                let mut versions = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let answer = client.predict(digits_request("logreg", &rows)).await;
                    versions.push(answer.expect("no request may fail").into_inner().version);
                }
                versions
            })
        })
        .collect();
    (stop, handles)
}

async fn finish(
    stop: Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<tokio::task::JoinHandle<Vec<String>>>,
) -> Vec<String> {
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.unwrap());
    }
    all
}

#[tokio::test]
async fn new_versions_switch_in_and_roll_back_under_load_without_failures() {
    let dir = repo_dir("switch");
    add_logreg(&dir, "1");
    let (mut server, repository) = start(&dir).await;
    let (stop, handles) = clients(&server, 4);
    tokio::time::sleep(Duration::from_millis(100)).await;
    add_logreg(&dir, "2");
    let report = repository.sync().await.unwrap();
    assert_eq!(report.loaded, [("logreg".to_string(), "2".to_string())]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    server
        .client
        .set_default_version(SetDefaultVersionRequest {
            name: "logreg".into(),
            version: "1".into(),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let versions = finish(stop, handles).await;
    // Each client saw 1, then 2, then 1 again (rolled back), never a failure.
    let first_2 = versions
        .iter()
        .position(|v| v == "2")
        .expect("version 2 served");
    assert!(versions[..first_2].iter().all(|v| v == "1"));
    assert_eq!(versions.last().unwrap(), "1", "rolled back");
    assert_eq!(server.model("logreg").await.version, "1");
    server.shutdown().await;
}

#[tokio::test]
async fn a_broken_version_never_replaces_a_working_one() {
    let dir = repo_dir("broken");
    add_logreg(&dir, "1");
    let (mut server, repository) = start(&dir).await;
    // A corrupt component, and a component whose init rejects its config.
    std::fs::create_dir_all(dir.join("logreg/2")).unwrap();
    std::fs::write(dir.join("logreg/2/model.wasm"), b"\0asm garbage").unwrap();
    add_logreg(&dir, "3");
    std::fs::write(dir.join("logreg/3/params.slpm"), b"not parameters").unwrap();
    let report = repository.sync().await.unwrap();
    assert_eq!(report.failed.len(), 2, "{report:?}");
    let models = server.models().await;
    let failed: Vec<_> = models.iter().filter(|m| !m.reason.is_empty()).collect();
    assert_eq!(failed.len(), 2);
    assert!(
        failed
            .iter()
            .any(|m| m.version == "2" && m.reason.contains("not a WebAssembly component"))
    );
    assert!(
        failed
            .iter()
            .any(|m| m.version == "3" && m.reason.contains("init failed"))
    );
    let digits = Digits::load_default().unwrap();
    let answer = server
        .client
        .predict(digits_request("logreg", &digits.holdout[..1]))
        .await
        .unwrap();
    assert_eq!(
        answer.into_inner().version,
        "1",
        "the working version keeps serving"
    );
    // Fixing version 3 (its parameters) loads it.
    add_logreg(&dir, "3");
    let report = repository.sync().await.unwrap();
    assert_eq!(report.loaded, [("logreg".to_string(), "3".to_string())]);
    assert_eq!(server.model("logreg").await.version, "3");
    server.shutdown().await;
}

#[tokio::test]
async fn a_removed_version_finishes_its_requests() {
    let dir = repo_dir("remove");
    add_logreg(&dir, "1");
    add_logreg(&dir, "2");
    let (mut server, repository) = start(&dir).await;
    assert_eq!(server.model("logreg").await.version, "2");
    let (stop, handles) = clients(&server, 4);
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::remove_dir_all(dir.join("logreg/2")).unwrap();
    let report = repository.sync().await.unwrap();
    assert_eq!(report.unloaded, [("logreg".to_string(), "2".to_string())]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let versions = finish(stop, handles).await;
    assert!(versions.contains(&"2".to_string()) && versions.last().unwrap() == "1");
    use sluice_api::proto::model_status::State;
    let models = server.models().await;
    let ready: Vec<&str> = models
        .iter()
        .filter(|m| m.state == State::Ready as i32)
        .map(|m| m.version.as_str())
        .collect();
    assert_eq!(ready, ["1"]);
    let two = models
        .iter()
        .find(|m| m.version == "2")
        .expect("version 2 is still listed");
    assert!(
        [State::Draining as i32, State::Unloaded as i32].contains(&two.state),
        "version 2 is draining or unloaded: {two:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn the_directory_is_watched() {
    let dir = repo_dir("watch");
    add_logreg(&dir, "1");
    let (mut server, repository) = start(&dir).await;
    let _watcher = repository.watch().unwrap();
    add_logreg(&dir, "2");
    // Bounded wait for the watcher (events settle for 300 ms, then a load).
    let mut version = String::new();
    for _ in 0..100 {
        version = server.model("logreg").await.version;
        if version == "2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(version, "2");
    // Once the change is synced, the watch stays quiet: the sync's own reads of the
    // directories are no change (they once made every sync schedule the next).
    tokio::time::sleep(Duration::from_millis(800)).await;
    let syncs = repository.syncs();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        repository.syncs(),
        syncs,
        "the watch synced with nothing changed"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn version_policies_choose_what_is_served() {
    let dir = repo_dir("policy");
    for version in ["1", "2", "10"] {
        add_logreg(&dir, version);
    }
    std::fs::write(dir.join("logreg/model.toml"), "versions = { latest = 2 }\n").unwrap();
    let (mut server, _repository) = start(&dir).await;
    let mut served: Vec<String> = server
        .models()
        .await
        .into_iter()
        .map(|m| m.version)
        .collect();
    served.sort();
    assert_eq!(served, ["10", "2"]);
    assert_eq!(
        server.model("logreg").await.version,
        "10",
        "the highest is the default"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn versions_over_the_api() {
    let mut server = TestServer::start(|server| server).await;
    let config = std::fs::read(sluice_train::params_path("digits-logreg")).unwrap();
    for version in ["a", "b"] {
        server
            .client
            .load_model(LoadModelRequest {
                component: Some(Component::Wasm(sample_component("digits_logreg"))),
                config: config.clone(),
                name: "m".into(),
                version: version.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    assert_eq!(
        server.model("m").await.version,
        "b",
        "the last loaded is the default"
    );
    let pin = |version: &str| SetDefaultVersionRequest {
        name: "m".into(),
        version: version.into(),
    };
    server.client.set_default_version(pin("a")).await.unwrap();
    assert_eq!(server.model("m").await.version, "a");
    let status = server
        .client
        .set_default_version(pin("c"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("no version `c`"),
        "{}",
        status.message()
    );
    // Unloading the pinned version returns to the last loaded.
    server
        .client
        .unload_model(sluice_api::proto::UnloadModelRequest {
            name: "m".into(),
            version: "a".into(),
        })
        .await
        .unwrap();
    assert_eq!(server.model("m").await.version, "b");
    server.shutdown().await;
}
