//! Selection policies: which linked models answer a query, how their answers are combined, and
//! how feedback changes that. Pure logic over a [`SelectionState`] and a seeded RNG, so every
//! update rule is unit-tested against hand-computed values.
//!
//! - **Exp3** draws one model per query with probability `(1-γ)·w/Σw + γ/K` and, on feedback with
//!   loss `L` for the model that answered, multiplies its weight by `exp(-η·L/p)`.
//! - **Exp4** runs every model and returns their weighted vote (classes) or weighted mean
//!   (numbers); on feedback each model's weight is multiplied by `exp(-η·L)`.
//! - **Static** always asks one model; **epsilon-greedy** asks the model with the lowest mean
//!   loss, or with probability ε a uniformly random one. Both are baselines.
//!
//! After every update the weights are scaled so the largest is 1 and floored at
//! [`WEIGHT_FLOOR`]: scaling keeps them from underflowing; the floor bounds how long a model that
//! was wrong for a while needs to win back its share after the world changes (concept drift):
//! about `ln(1/WEIGHT_FLOOR)/η` losses of the others.

use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// No weight falls below this share of the largest.
pub const WEIGHT_FLOOR: f64 = 1e-3;

/// One row's answer from a model, or the combined answer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Prediction {
    /// A class label.
    Class(i64),
    /// A number (regression).
    Number(f64),
}

/// The loss of `prediction` for the true `label`: 0/1 for class labels, absolute error for
/// numbers (mixing the two kinds is a caller bug and counts as a full loss).
pub fn loss(prediction: Prediction, label: Prediction) -> f64 {
    match (prediction, label) {
        (Prediction::Class(p), Prediction::Class(l)) => f64::from(u8::from(p != l)),
        (Prediction::Number(p), Prediction::Number(l)) => (p - l).abs(),
        _ => 1.0,
    }
}

/// A policy and its parameters, as an application is registered with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PolicyConfig {
    /// One model per query, drawn by weight.
    Exp3 {
        /// Learning rate η.
        eta: f64,
        /// Exploration share γ (0 to 1).
        gamma: f64,
    },
    /// Every model; weighted combination.
    Exp4 {
        /// Learning rate η.
        eta: f64,
    },
    /// Always the one named model (`name` or `name@version` as linked).
    Static {
        /// The model.
        model: String,
    },
    /// The best model so far; a random one with probability ε.
    EpsilonGreedy {
        /// Exploration probability ε (0 to 1).
        epsilon: f64,
    },
}

/// Exp3's default learning rate.
pub const EXP3_ETA: f64 = 0.1;
/// Exp3's default exploration share.
pub const EXP3_GAMMA: f64 = 0.05;
/// Exp4's default learning rate.
pub const EXP4_ETA: f64 = 0.2;
/// Epsilon-greedy's default exploration probability.
pub const EPSILON: f64 = 0.1;

impl PolicyConfig {
    /// Exp3 with its default parameters.
    pub const EXP3_DEFAULT: PolicyConfig = PolicyConfig::Exp3 {
        eta: EXP3_ETA,
        gamma: EXP3_GAMMA,
    };
    /// Exp4 with its default learning rate.
    pub const EXP4_DEFAULT: PolicyConfig = PolicyConfig::Exp4 { eta: EXP4_ETA };

    /// Checks the parameters' ranges; the error names the parameter.
    pub fn validate(&self, linked: &[String]) -> Result<(), String> {
        let in_unit = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} must be between 0 and 1, not {v}"))
            }
        };
        let positive = |name: &str, v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(format!("{name} must be a positive number, not {v}"))
            }
        };
        match self {
            PolicyConfig::Exp3 { eta, gamma } => {
                positive("eta", *eta)?;
                in_unit("gamma", *gamma)
            }
            PolicyConfig::Exp4 { eta } => positive("eta", *eta),
            PolicyConfig::EpsilonGreedy { epsilon } => in_unit("epsilon", *epsilon),
            PolicyConfig::Static { model } if !linked.is_empty() && !linked.contains(model) => Err(
                format!("the static policy's model `{model}` is not linked (linked: {linked:?})"),
            ),
            PolicyConfig::Static { .. } => Ok(()),
        }
    }

    /// Whether queries run every linked model (an ensemble) rather than one.
    pub fn is_ensemble(&self) -> bool {
        matches!(self, PolicyConfig::Exp4 { .. })
    }

    /// The policy's short name, as metrics and the CLI show it.
    pub fn name(&self) -> &'static str {
        match self {
            PolicyConfig::Exp3 { .. } => "exp3",
            PolicyConfig::Exp4 { .. } => "exp4",
            PolicyConfig::Static { .. } => "static",
            PolicyConfig::EpsilonGreedy { .. } => "epsilon-greedy",
        }
    }
}

/// What a policy knows of one linked model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArmState {
    /// Its weight (Exp3, Exp4; 1 for the others). The largest weight is 1.
    pub weight: f64,
    /// Feedback events that included this model's loss.
    pub observations: u64,
    /// The sum of those losses.
    pub total_loss: f64,
}

impl ArmState {
    /// The mean loss so far (0 before any feedback).
    pub fn mean_loss(&self) -> f64 {
        if self.observations == 0 {
            0.0
        } else {
            self.total_loss / self.observations as f64
        }
    }
}

/// A policy's learned state for one application (or one user of it). Keyed by linked model
/// (`name` or `name@version`), so linking or unlinking a model leaves the others' weights.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SelectionState {
    /// Per linked model.
    pub arms: BTreeMap<String, ArmState>,
    /// Feedback events applied.
    pub feedback_count: u64,
}

impl SelectionState {
    /// Makes the arms exactly `models`: a model not seen before starts at the mean weight of
    /// the others (1 if there are none); an unlinked model's arm is dropped.
    pub fn sync(&mut self, models: &[String]) {
        self.arms.retain(|key, _| models.contains(key));
        let mean = if self.arms.is_empty() {
            1.0
        } else {
            self.arms.values().map(|a| a.weight).sum::<f64>() / self.arms.len() as f64
        };
        for model in models {
            self.arms.entry(model.clone()).or_insert(ArmState {
                weight: mean,
                observations: 0,
                total_loss: 0.0,
            });
        }
    }

    fn weights(&self, models: &[String]) -> Vec<f64> {
        models.iter().map(|m| self.arms[m].weight).collect()
    }

    fn arm(&mut self, model: &str) -> &mut ArmState {
        self.arms.get_mut(model).expect("synced before use")
    }

    /// Scales the weights so the largest is 1, then floors them at [`WEIGHT_FLOOR`].
    fn normalize(&mut self) {
        let max = self.arms.values().map(|a| a.weight).fold(0.0, f64::max);
        for arm in self.arms.values_mut() {
            let scaled = if max > 0.0 && max.is_finite() {
                arm.weight / max
            } else {
                1.0
            };
            arm.weight = scaled.max(WEIGHT_FLOOR);
        }
    }
}

/// A combined answer for one row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Combined {
    /// The answer.
    pub prediction: Prediction,
    /// The share of the answering models' weight that agrees with it (1 for single-model
    /// policies).
    pub confidence: f64,
}

/// The models' answers for one row, in the order of `models`; `None` where a model is missing
/// (a straggler past the deadline, or a failure).
pub type RowPredictions<'a> = &'a [Option<Prediction>];

/// A selection policy. The state passed in has been [`SelectionState::sync`]ed with `models`.
pub trait Policy {
    /// Which models (indices into `models`) to query.
    fn select(
        &self,
        state: &SelectionState,
        models: &[String],
        rng: &mut dyn rand::RngCore,
    ) -> Vec<usize>;

    /// Combines the answers of one row; `None` when no model answered.
    fn combine(
        &self,
        state: &SelectionState,
        models: &[String],
        answers: RowPredictions<'_>,
    ) -> Option<Combined>;

    /// Learns from feedback. `losses[i]` is model i's loss on the input (`None` when unknown);
    /// `chosen` are the models that answered the query being judged.
    fn observe(
        &self,
        state: &mut SelectionState,
        models: &[String],
        chosen: &[usize],
        losses: &[Option<f64>],
    );
}

/// Records `loss` in a model's statistics.
fn record(state: &mut SelectionState, model: &str, loss: f64) {
    let arm = state.arm(model);
    arm.observations += 1;
    arm.total_loss += loss;
}

/// The single answer of a one-model policy.
fn only_answer(answers: RowPredictions<'_>) -> Option<Combined> {
    answers.iter().flatten().next().map(|&prediction| Combined {
        prediction,
        confidence: 1.0,
    })
}

/// Exp3's probabilities: `(1-γ)·w/Σw + γ/K`.
pub fn exp3_probabilities(weights: &[f64], gamma: f64) -> Vec<f64> {
    let total: f64 = weights.iter().sum();
    let k = weights.len() as f64;
    weights
        .iter()
        .map(|w| (1.0 - gamma) * w / total + gamma / k)
        .collect()
}

fn draw(probabilities: &[f64], rng: &mut dyn rand::RngCore) -> usize {
    let mut ticket: f64 = rng.random::<f64>() * probabilities.iter().sum::<f64>();
    for (i, p) in probabilities.iter().enumerate() {
        if ticket < *p {
            return i;
        }
        ticket -= p;
    }
    probabilities.len() - 1
}

impl Policy for PolicyConfig {
    fn select(
        &self,
        state: &SelectionState,
        models: &[String],
        rng: &mut dyn rand::RngCore,
    ) -> Vec<usize> {
        if models.is_empty() {
            return Vec::new();
        }
        match self {
            PolicyConfig::Exp3 { gamma, .. } => {
                vec![draw(
                    &exp3_probabilities(&state.weights(models), *gamma),
                    rng,
                )]
            }
            PolicyConfig::Exp4 { .. } => (0..models.len()).collect(),
            PolicyConfig::Static { model } => {
                vec![models.iter().position(|m| m == model).unwrap_or(0)]
            }
            PolicyConfig::EpsilonGreedy { epsilon } => {
                if rng.random::<f64>() < *epsilon {
                    vec![rng.random_range(0..models.len())]
                } else {
                    let best = models
                        .iter()
                        .enumerate()
                        .min_by(|(_, a), (_, b)| {
                            state.arms[*a]
                                .mean_loss()
                                .total_cmp(&state.arms[*b].mean_loss())
                        })
                        .map(|(i, _)| i)
                        .expect("models is not empty");
                    vec![best]
                }
            }
        }
    }

    fn combine(
        &self,
        state: &SelectionState,
        models: &[String],
        answers: RowPredictions<'_>,
    ) -> Option<Combined> {
        if !self.is_ensemble() {
            return only_answer(answers);
        }
        let weighted: Vec<(f64, Prediction)> = models
            .iter()
            .zip(answers)
            .filter_map(|(m, a)| a.map(|p| (state.arms[m].weight, p)))
            .collect();
        let total: f64 = weighted.iter().map(|(w, _)| w).sum();
        if weighted.is_empty() || total <= 0.0 {
            return None;
        }
        match weighted[0].1 {
            Prediction::Class(_) => {
                let mut votes: BTreeMap<i64, f64> = BTreeMap::new();
                for (w, p) in &weighted {
                    if let Prediction::Class(label) = p {
                        *votes.entry(*label).or_default() += w;
                    }
                }
                // Ties go to the smaller label, so the answer is deterministic.
                let (label, votes) =
                    votes.into_iter().fold(
                        (0, f64::MIN),
                        |best, (l, v)| if v > best.1 { (l, v) } else { best },
                    );
                Some(Combined {
                    prediction: Prediction::Class(label),
                    confidence: votes / total,
                })
            }
            Prediction::Number(_) => {
                let numbers = weighted.iter().filter_map(|(w, p)| match p {
                    Prediction::Number(x) => Some((*w, *x)),
                    Prediction::Class(_) => None,
                });
                let mean = numbers.clone().map(|(w, x)| w * x).sum::<f64>() / total;
                // Models within 5% of the answer (or 1e-6 of it, near zero) agree with it.
                let tolerance = (mean.abs() * 0.05).max(1e-6);
                let agreeing: f64 = numbers
                    .filter(|(_, x)| (x - mean).abs() <= tolerance)
                    .map(|(w, _)| w)
                    .sum();
                Some(Combined {
                    prediction: Prediction::Number(mean),
                    confidence: agreeing / total,
                })
            }
        }
    }

    fn observe(
        &self,
        state: &mut SelectionState,
        models: &[String],
        chosen: &[usize],
        losses: &[Option<f64>],
    ) {
        state.feedback_count += 1;
        match self {
            PolicyConfig::Exp3 { eta, gamma } => {
                let probabilities = exp3_probabilities(&state.weights(models), *gamma);
                for &i in chosen {
                    if let Some(loss) = losses[i] {
                        let arm = state.arm(&models[i]);
                        arm.weight *= (-eta * loss / probabilities[i]).exp();
                        record(state, &models[i], loss);
                    }
                }
            }
            PolicyConfig::Exp4 { eta } => {
                for (model, loss) in models.iter().zip(losses) {
                    if let Some(loss) = *loss {
                        state.arm(model).weight *= (-eta * loss).exp();
                        record(state, model, loss);
                    }
                }
            }
            PolicyConfig::Static { .. } | PolicyConfig::EpsilonGreedy { .. } => {
                for &i in chosen {
                    if let Some(loss) = losses[i] {
                        record(state, &models[i], loss);
                    }
                }
            }
        }
        state.normalize();
    }
}

#[cfg(test)]
mod tests;
