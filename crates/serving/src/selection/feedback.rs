//! Learning from feedback: the true labels of an input are joined with what every linked
//! model said for it (from the cache, or by running the model again), each model's loss is
//! computed, the policy's state is updated, and the new state is stored durably before it is
//! made live and the feedback acknowledged. The update is applied to the state as stored, so
//! feedback taken by several servers sharing the store at once all counts.

use super::app::check_label;
use super::fanout::{Query, answer_job};
use super::hex;
use super::policy::{self, Policy, Prediction};
use super::{Applications, FeedbackOutcome, SelectionError};
use crate::cache::digest_inputs;
use sluice_types::Tensor;

impl Applications {
    /// Learns from the true `labels` of `inputs` (one per row): joins them with what each
    /// linked model said (from the cache, or by running it), updates the policy's state for
    /// `(app, user)` and stores it durably before returning.
    pub async fn feedback(
        &self,
        app_name: &str,
        user: &str,
        inputs: Vec<Tensor>,
        labels: Vec<Prediction>,
    ) -> Result<FeedbackOutcome, SelectionError> {
        let (app, rows) = self.queried(app_name, user, &inputs)?;
        let spec = &app.spec;
        if labels.len() != rows {
            return Err(SelectionError::InvalidArgument(format!(
                "labels: {} labels for {rows} input rows",
                labels.len()
            )));
        }
        for (i, label) in labels.iter().enumerate() {
            check_label(spec.kind, *label)
                .map_err(|e| SelectionError::InvalidArgument(format!("labels[{i}]: {e}")))?;
        }
        let digest = digest_inputs(&inputs);
        let query = Query::new(spec, rows, digest, inputs, false);
        let losses = self.losses_of(&spec.models, &query, &labels).await;
        let recent = match self.recent.chosen(app_name, user, digest) {
            Some(links) => Some(links),
            None => {
                self.store
                    .shared_query(app_name, user, &hex(&digest))
                    .await?
            }
        };
        let shared = self.states.get(app_name, user).await?;
        let mut live = shared.lock().await;
        // The models that answered the judged query; for an input never queried, the ones
        // the policy would pick now (as if it had been).
        let chosen: Vec<usize> = match recent {
            Some(links) => links
                .iter()
                .filter_map(|l| spec.models.iter().position(|m| m == l))
                .collect(),
            None => {
                let mut now = live.clone();
                now.sync(&spec.models);
                spec.policy.select(
                    &now,
                    &spec.models,
                    &mut *app.rng.lock().unwrap_or_else(|e| e.into_inner()),
                )
            }
        };
        let (policy, models, judged) = (spec.policy.clone(), spec.models.clone(), chosen.clone());
        let learned = losses.clone();
        let next = self
            .states
            .update(app_name, user, move |stored| {
                let mut next = stored.unwrap_or_default();
                next.sync(&models);
                policy.observe(&mut next, &models, &judged, &learned);
                next
            })
            .await?;
        *live = next.clone();
        Ok(FeedbackOutcome {
            spec: spec.clone(),
            losses: spec.models.iter().cloned().zip(losses).collect(),
            chosen: chosen.iter().map(|&i| spec.models[i].clone()).collect(),
            state: next,
        })
    }

    /// Each linked model's mean loss over the rows against `labels` (`None` where the model
    /// gave no answer), every model asked at once.
    async fn losses_of(
        &self,
        links: &[String],
        query: &Query,
        labels: &[Prediction],
    ) -> Vec<Option<f64>> {
        let jobs: Vec<_> = links
            .iter()
            .map(|link| tokio::spawn(answer_job(&self.registry, &self.cache, link, query.clone())))
            .collect();
        let mut losses = Vec::with_capacity(jobs.len());
        for job in jobs {
            let loss = match job.await {
                Ok((Ok(predictions), _)) => Some(
                    predictions
                        .iter()
                        .zip(labels)
                        .map(|(p, l)| policy::loss(*p, *l))
                        .sum::<f64>()
                        / query.rows as f64,
                ),
                _ => None,
            };
            losses.push(loss);
        }
        losses
    }
}
