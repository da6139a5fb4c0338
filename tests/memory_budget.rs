//! Registered is not resident: variants that may scale to zero start with no replica, hold
//! one while used, and lose it, least recently used first, when the server holds more than
//! its memory budget; an evicted variant still answers (its next request starts a replica).

use crate::support::{TestServer, digits_request, post_json, registry_with, sample_component};
use sluice_api::proto::LoadModelRequest;
use sluice_api::proto::load_model_request::Component;
use sluice_serving::ModelLimits;
use sluice_serving::autoscale::ReplicaRange;
use sluice_serving::batching::BatchingConfig;
use sluice_serving::registry::{LoadRequest, Registry};
use sluice_train::Digits;
use std::sync::Arc;
use std::time::Duration;

/// The logistic regression as `name`, starting with `replicas`, in `autoscale` if given.
fn logreg(name: &str, replicas: usize, autoscale: Option<ReplicaRange>) -> LoadRequest {
    LoadRequest {
        component: sample_component("digits_logreg"),
        config: std::fs::read(sluice_train::params_path("digits-logreg")).unwrap(),
        graphs: Vec::new(),
        name: Some(name.into()),
        version: None,
        replicas,
        autoscale,
        limits: ModelLimits::default(),
        batching: BatchingConfig::default(),
    }
}

/// What one replica of the logistic regression holds, and its code, as the budget counts.
async fn one_variants_costs() -> (u64, u64) {
    let registry = registry_with(sluice_runtime::RuntimeConfig::default().compute, |r| r);
    let model = registry
        .load(logreg("budget-probe", 1, None))
        .await
        .unwrap();
    (model.instance_bytes(), model.code_bytes())
}

/// A variant that starts with no replica and may have one.
fn variant(name: &str) -> LoadModelRequest {
    LoadModelRequest {
        component: Some(Component::Wasm(sample_component("digits_logreg"))),
        config: std::fs::read(sluice_train::params_path("digits-logreg")).unwrap(),
        name: name.into(),
        replicas: 0,
        min_replicas: 0,
        max_replicas: 1,
        ..Default::default()
    }
}

/// Waits until the registry holds no more than its budget; panics after 10 s.
async fn until_within_budget(registry: &Registry) {
    let budget = registry.memory_budget().expect("a budget");
    let started = std::time::Instant::now();
    while registry.resident_bytes() > budget {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{} bytes resident after 10 s, budget {budget}",
            registry.resident_bytes()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn idle_variants_are_evicted_least_recently_used_first_and_still_answer() {
    let (instance, code) = one_variants_costs().await;
    assert!(instance > 0 && code > 0, "instance {instance}, code {code}");
    // Room for the code (once: the variants share it) and two and a half replicas.
    let budget = code + instance * 5 / 2;
    let registry: Arc<Registry> =
        registry_with(sluice_runtime::RuntimeConfig::default().compute, |r| {
            r.with_memory_budget(budget)
        });
    let mut server = TestServer::start_with(registry.clone(), |server| server, None).await;
    let names = ["budget-m1", "budget-m2", "budget-m3", "budget-m4"];
    for name in names {
        server.client.load_model(variant(name)).await.unwrap();
    }
    for name in names {
        assert_eq!(
            server.model(name).await.replicas,
            0,
            "{name} starts at zero"
        );
    }
    assert_eq!(
        registry.resident_bytes(),
        code,
        "one copy of the code, no instance"
    );

    let digits = Digits::load_default().unwrap();
    let ask = |server: &mut TestServer, name: &'static str| {
        let request = digits_request(name, &digits.holdout[..1]);
        let mut client = server.client.clone();
        async move {
            client
                .predict(request)
                .await
                .unwrap_or_else(|status| panic!("{name} did not answer: {status:?}"))
        }
    };
    for name in names {
        ask(&mut server, name).await;
    }
    until_within_budget(&registry).await;
    let replicas = |server: &mut TestServer| {
        let mut server_client = server.client.clone();
        async move {
            let models = server_client
                .list_models(sluice_api::proto::ListModelsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .models;
            names.map(|name| {
                models
                    .iter()
                    .find(|m| m.name == name)
                    .map_or(u32::MAX, |m| m.replicas)
            })
        }
    };
    assert_eq!(
        replicas(&mut server).await,
        [0, 0, 1, 1],
        "the two used last stay"
    );
    assert_eq!(registry.resident_bytes(), code + 2 * instance);

    // The first, evicted, answers again; now the third is the least recently used.
    ask(&mut server, "budget-m1").await;
    until_within_budget(&registry).await;
    assert_eq!(replicas(&mut server).await, [1, 0, 0, 1]);
    let metrics = server.metrics().await;
    for (name, evictions) in [("budget-m1", 1), ("budget-m2", 1), ("budget-m3", 1)] {
        let line = format!("sluice_evictions_total{{model=\"{name}\"}} {evictions}");
        assert!(metrics.contains(&line), "no `{line}` in\n{metrics}");
    }
    let resident =
        format!("sluice_model_resident_bytes{{model=\"budget-m1\",version=\"1\"}} {instance}");
    assert!(metrics.contains(&resident), "no `{resident}`");
    assert!(metrics.contains("sluice_model_resident_bytes{model=\"budget-m2\",version=\"1\"} 0"));
    server.shutdown().await;
}

/// Without a replica range, `replicas = 0` is not a thing: the model starts with one.
#[tokio::test]
async fn only_a_model_that_may_scale_to_zero_starts_at_zero() {
    let registry = registry_with(sluice_runtime::RuntimeConfig::default().compute, |r| r);
    let fixed = registry.load(logreg("zero-fixed", 0, None)).await.unwrap();
    assert_eq!(fixed.replicas(), 1);
    let range = ReplicaRange::new(0, 2).unwrap();
    let ranged = registry
        .load(logreg("zero-ranged", 0, range))
        .await
        .unwrap();
    assert_eq!(ranged.replicas(), 0);
    assert_eq!(ranged.resident_bytes(), 0);
}

/// A variant of `component` (a sample's file stem; its parameters are `params`) that starts
/// with no replica and may have one.
fn variant_of(name: &str, component: &str, params: &str) -> LoadModelRequest {
    LoadModelRequest {
        component: Some(Component::Wasm(sample_component(component))),
        config: std::fs::read(sluice_train::params_path(params)).unwrap(),
        ..variant(name)
    }
}

/// Each variant's residence in `ListModels`, and the reason the KServe repository index gives.
async fn residences(server: &mut TestServer, names: [&str; 2]) -> [(i32, String); 2] {
    let models = server.models().await;
    let url = format!("{}/v2/repository/index", server.http_url());
    let index = post_json(&reqwest::Client::new(), &url, &serde_json::json!({})).await;
    names.map(|name| {
        let residence = models.iter().find(|m| m.name == name).unwrap().residence;
        let entry = index
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| entry["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not in the index {index}"));
        (residence, entry["reason"].as_str().unwrap().to_string())
    })
}

/// Past the instances, the code of components none of whose versions runs goes too, least
/// recently used first, and comes back from the precompiled cache for the next request.
#[tokio::test]
async fn the_code_of_idle_components_is_evicted_too_and_read_back_when_asked_for() {
    use sluice_api::proto::model_status::Residence;
    let probe = registry_with(sluice_runtime::RuntimeConfig::default().compute, |r| r);
    let code = |name: &'static str, component: &'static str, params: &'static str| {
        let probe = probe.clone();
        async move {
            let mut request = logreg(name, 1, None);
            request.component = sample_component(component);
            request.config = std::fs::read(sluice_train::params_path(params)).unwrap();
            probe.load(request).await.unwrap().code_bytes()
        }
    };
    let logreg_code = code("code-probe-logreg", "digits_logreg", "digits-logreg").await;
    let mlp_code = code("code-probe-mlp", "digits_mlp", "digits-mlp").await;
    // Both components' code does not fit; either one, with one replica, does.
    let budget = logreg_code + mlp_code - 1;
    let registry = registry_with(sluice_runtime::RuntimeConfig::default().compute, |r| {
        r.with_memory_budget(budget)
    });
    let runtime = registry.runtime().clone();
    let mut server = TestServer::start_with(registry.clone(), |server| server, None).await;
    let names = ["code-logreg", "code-mlp"];
    server
        .client
        .load_model(variant_of(names[0], "digits_logreg", "digits-logreg"))
        .await
        .unwrap();
    server
        .client
        .load_model(variant_of(names[1], "digits_mlp", "digits-mlp"))
        .await
        .unwrap();
    until_within_budget(&registry).await;
    let (registered, code_only) = (Residence::Registered as i32, Residence::CodeOnly as i32);
    let not_resident = "not resident".to_string();
    let code_in_memory = "not resident: compiled code in memory".to_string();
    assert_eq!(
        residences(&mut server, names).await,
        [
            (registered, not_resident.clone()),
            (code_only, code_in_memory.clone())
        ],
        "the code loaded first goes"
    );
    assert_eq!(runtime.resident_components(), 1);
    let reloads = runtime.code_reloads();

    let digits = Digits::load_default().unwrap();
    let answer = server
        .client
        .predict(digits_request(names[0], &digits.holdout[..1]))
        .await
        .expect("an evicted variant answers");
    assert_eq!(answer.into_inner().outputs.len(), 2);
    assert_eq!(
        runtime.code_reloads(),
        reloads + 1,
        "its code was read back"
    );
    // Its replica then goes, and the other's code, now the least recently used.
    until_within_budget(&registry).await;
    assert_eq!(
        residences(&mut server, names).await,
        [(code_only, code_in_memory), (registered, not_resident)]
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("sluice_code_evictions_total "),
        "no code evictions counted in\n{metrics}"
    );
    server.shutdown().await;
}
