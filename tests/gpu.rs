//! The GPU compute backend end to end: the bundled MLP and CNN served with their compute
//! imports on a GPU give the same predictions as on the CPU backend, over real gRPC.
//!
//! In CI the GPU is Mesa's lavapipe (forced, as `sluice serve --compute gpu` would); with `CI`
//! unset and no adapter at all, the test says so and skips.

use crate::support::{TestServer, digits_request, f32_values, i64_values, output};
use sluice_api::proto::PredictResponse;
use sluice_compute::{Backend, ComputeChoice, select};
use sluice_train::Digits;
use std::sync::Arc;

fn gpu_backend() -> Option<Arc<dyn Backend>> {
    match select(ComputeChoice::Gpu) {
        Ok(backend) => Some(backend),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping the gpu end-to-end test: {e}");
            None
        }
        Err(e) => panic!("CI is set, so the gpu test must run, but: {e}"),
    }
}

/// The answers of `model` to every held-out digit, in batches of 90.
async fn answers(server: &mut TestServer, model: &str) -> Vec<PredictResponse> {
    let digits = Digits::load_default().unwrap();
    let mut responses = Vec::new();
    for batch in digits.holdout.chunks(90) {
        let request = digits_request(model, batch);
        responses.push(server.client.predict(request).await.unwrap().into_inner());
    }
    responses
}

#[tokio::test]
async fn mlp_and_cnn_predict_the_same_on_the_gpu_as_on_the_cpu() {
    let Some(gpu) = gpu_backend() else { return };
    let mut on_gpu = TestServer::start_on(gpu).await.load_samples().await;
    let mut on_cpu = TestServer::start_on(select(ComputeChoice::Cpu).unwrap())
        .await
        .load_samples()
        .await;
    let listed = on_gpu
        .client
        .list_models(sluice_api::proto::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.compute.starts_with("gpu: "), "{}", listed.compute);

    for model in ["digits-mlp", "digits-cnn"] {
        let gpu_answers = answers(&mut on_gpu, model).await;
        let cpu_answers = answers(&mut on_cpu, model).await;
        for (g, c) in gpu_answers.iter().zip(&cpu_answers) {
            assert_eq!(
                i64_values(output(g, "label")),
                i64_values(output(c, "label")),
                "{model}: labels differ"
            );
            let (gp, cp) = (
                f32_values(output(g, "probabilities")),
                f32_values(output(c, "probabilities")),
            );
            assert_eq!(gp.len(), cp.len());
            for (x, y) in gp.iter().zip(&cp) {
                assert!((x - y).abs() < 1e-4, "{model}: probability {x} vs {y}");
            }
        }
    }
    on_gpu.shutdown().await;
    on_cpu.shutdown().await;
}
