//! all-MiniLM-L6-v2 sentence embeddings: text in (`BYTES` `[-1]`), a unit vector out (FP32
//! `[-1, 384]`), as sentence-transformers computes them.
//!
//! The parts that are the model author's code run in the sandbox: tokenizing (the model's
//! own `tokenizer.json`, its init config), cutting a batch into runs of similar lengths
//! ([`runs`]) and padding each run to its longest sentence with an attention mask, and mean
//! pooling over the real tokens followed by L2 normalization. The encoder, 22 M parameters of
//! matrix products, is the graph `encoder` and runs on the host through `wasi:nn`.

use sluice_sdk::nn::Graph;
use sluice_sdk::{Dtype, Model, ModelError, ModelInfo, Tensor, TensorSpec};
use tokenizers::{Tokenizer, TruncationParams};

/// Width of an embedding.
pub const DIMENSIONS: usize = 384;
/// Longest input in word pieces, as sentence-transformers truncates (`max_seq_length`).
pub const MAX_TOKENS: usize = 256;
/// Word pieces, padding included, in one run of the encoder at most (a bound on the memory a
/// run's hidden states take, `[rows, longest, 384]`).
pub const TOKENS_PER_RUN: usize = 4096;
/// What one run of the encoder costs besides its word pieces, in word pieces' worth of work:
/// a call through `wasi:nn`, and matrix products too thin to run at full speed.
pub const RUN_OVERHEAD: f64 = 16.0;

struct MiniLm {
    tokenizer: Tokenizer,
    encoder: Graph,
}

/// Pads token ids to the longest row; returns ids, mask (both `[rows, longest]`) and longest.
pub fn pad(rows: &[Vec<u32>]) -> (Vec<i64>, Vec<i64>, usize) {
    let longest = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = vec![0i64; rows.len() * longest];
    let mut mask = vec![0i64; rows.len() * longest];
    for (r, row) in rows.iter().enumerate() {
        for (t, &id) in row.iter().enumerate() {
            ids[r * longest + t] = i64::from(id);
            mask[r * longest + t] = 1;
        }
    }
    (ids, mask, longest)
}

/// What the encoder spends on a run of `rows` rows padded to `longest` word pieces, in word
/// pieces' worth of work: each padded piece goes through every layer's matrix products (12 ×
/// 384² multiply-adds a layer: the projections and the feed-forward block), and attention
/// adds 2 × `longest` × 384 for it, so a piece of a row `longest` long costs
/// 1 + `longest` / 2304 pieces; and the run's [`RUN_OVERHEAD`].
fn run_cost(rows: usize, longest: usize) -> f64 {
    let attention = longest as f64 / (6 * DIMENSIONS) as f64;
    RUN_OVERHEAD + (rows * longest) as f64 * (1.0 + attention)
}

/// Groups rows (by index) into runs of the encoder, so that a short sentence is not padded to
/// the length of a long one it happens to share a batch with: sorted by length, the rows are
/// cut where [`run_cost`] says the runs cost least in all (an exact search over the cuts,
/// `rows`² steps), each run at most [`TOKENS_PER_RUN`] padded word pieces (or one row).
pub fn runs(lengths: &[usize]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let sorted: Vec<usize> = order.iter().map(|&i| lengths[i]).collect();
    // cheapest[j]: the least cost of the first j sorted rows, and where its last run starts.
    let mut cheapest = vec![(0.0, 0); sorted.len() + 1];
    for end in 1..=sorted.len() {
        // Sorted ascending, so a run's last row is its longest.
        let longest = sorted[end - 1];
        cheapest[end] = (0..end)
            .rev()
            .take_while(|&start| start == end - 1 || (end - start) * longest <= TOKENS_PER_RUN)
            .map(|start| (cheapest[start].0 + run_cost(end - start, longest), start))
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .expect("a run of one row is always possible");
    }
    let mut runs = Vec::new();
    let mut end = sorted.len();
    while end > 0 {
        let start = cheapest[end].1;
        runs.push(order[start..end].to_vec());
        end = start;
    }
    runs.reverse();
    runs
}

/// Mean of each row's hidden states over its real tokens, scaled to unit length.
/// `hidden` is `[rows, longest, DIMENSIONS]`, `mask` `[rows, longest]`.
pub fn pool(hidden: &[f32], mask: &[i64], rows: usize, longest: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * DIMENSIONS];
    for r in 0..rows {
        let sum = &mut out[r * DIMENSIONS..(r + 1) * DIMENSIONS];
        let mut count = 0f32;
        for t in 0..longest {
            if mask[r * longest + t] == 0 {
                continue;
            }
            count += 1.0;
            let state = &hidden[(r * longest + t) * DIMENSIONS..][..DIMENSIONS];
            sum.iter_mut().zip(state).for_each(|(s, h)| *s += h);
        }
        // As sentence-transformers: the count is clamped at 1e-9, the norm at 1e-12.
        let count = count.max(1e-9);
        sum.iter_mut().for_each(|s| *s /= count);
        let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        sum.iter_mut().for_each(|s| *s /= norm);
    }
    out
}

impl Model for MiniLm {
    fn init(config: &[u8]) -> Result<Self, ModelError> {
        let mut tokenizer = Tokenizer::from_bytes(config).map_err(|e| {
            ModelError::Internal(format!(
                "the config must be the model's tokenizer.json: {e}"
            ))
        })?;
        // tokenizer.json pads every input to 128 and truncates there; sentence-transformers
        // truncates at 256 and pads a batch to its longest, which `pad` does.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| ModelError::Internal(format!("setting truncation: {e}")))?;
        Ok(MiniLm {
            tokenizer,
            encoder: Graph::load("encoder")?,
        })
    }

    fn info(&self) -> ModelInfo {
        ModelInfo {
            name: "minilm".into(),
            version: "1".into(),
            inputs: vec![TensorSpec::new("text", Dtype::Bytes, &[-1])],
            outputs: vec![TensorSpec::new(
                "embedding",
                Dtype::Fp32,
                &[-1, DIMENSIONS as i64],
            )],
            max_batch: 64,
        }
    }

    fn predict(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ModelError> {
        let text = sluice_sdk::input(&inputs, "text")?;
        let mut rows = Vec::new();
        for (i, element) in text.to_bytes_elements()?.into_iter().enumerate() {
            let sentence = std::str::from_utf8(element)
                .map_err(|e| ModelError::InvalidInput(format!("text[{i}] is not UTF-8: {e}")))?;
            let encoding = self
                .tokenizer
                .encode(sentence, true)
                .map_err(|e| ModelError::Internal(format!("tokenizing text[{i}]: {e}")))?;
            rows.push(encoding.get_ids().to_vec());
        }
        let lengths: Vec<usize> = rows.iter().map(Vec::len).collect();
        let mut embeddings = vec![0f32; rows.len() * DIMENSIONS];
        for run in runs(&lengths) {
            let members: Vec<Vec<u32>> = run.iter().map(|&i| rows[i].clone()).collect();
            let pooled = self.embed(&members)?;
            for (k, &i) in run.iter().enumerate() {
                embeddings[i * DIMENSIONS..(i + 1) * DIMENSIONS]
                    .copy_from_slice(&pooled[k * DIMENSIONS..(k + 1) * DIMENSIONS]);
            }
        }
        Ok(vec![Tensor::from_f32(
            "embedding",
            &[rows.len() as u32, DIMENSIONS as u32],
            &embeddings,
        )])
    }
}

impl MiniLm {
    /// Runs the encoder on one padded run of rows and pools it.
    fn embed(&self, rows: &[Vec<u32>]) -> Result<Vec<f32>, ModelError> {
        let (ids, mask, longest) = pad(rows);
        let shape = [rows.len() as u32, longest as u32];
        let outputs = self.encoder.compute(&[
            Tensor::from_i64("input_ids", &shape, &ids),
            Tensor::from_i64("attention_mask", &shape, &mask),
        ])?;
        let hidden = sluice_sdk::input(&outputs, "last_hidden_state")
            .map_err(|_| ModelError::Internal("the encoder returned no last_hidden_state".into()))?
            .to_f32()?;
        Ok(pool(&hidden, &mask, rows.len(), longest))
    }
}

sluice_sdk::export_model!(MiniLm);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_masks_what_it_adds() {
        let (ids, mask, longest) = pad(&[vec![101, 7, 102], vec![101, 102]]);
        assert_eq!(longest, 3);
        assert_eq!(ids, [101, 7, 102, 101, 102, 0]);
        assert_eq!(mask, [1, 1, 1, 1, 1, 0]);
    }

    #[test]
    fn runs_keep_short_rows_away_from_long_ones() {
        // Two long rows and many short ones: the short ones share runs, the long ones do not
        // pad them.
        let mut lengths = vec![300, 10, 12, 300];
        lengths.extend(std::iter::repeat_n(8, 100));
        let runs = runs(&lengths);
        let mut seen: Vec<usize> = runs.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for run in &runs {
            let longest = run.iter().map(|&i| lengths[i]).max().unwrap();
            assert!(
                run.len() == 1 || run.len() * longest <= TOKENS_PER_RUN,
                "{run:?}"
            );
        }
        assert!(runs.iter().any(|run| run.contains(&0) && run.contains(&3)));
        assert!(
            runs.iter()
                .all(|run| !(run.contains(&0) && run.contains(&1)))
        );
    }

    #[test]
    fn a_long_row_runs_apart_from_short_ones_even_in_a_small_batch() {
        // Seven short sentences and one long: padding the seven to 256 would run 8 × 256
        // pieces instead of 7 × 21 + 256.
        let lengths = [12, 256, 15, 18, 20, 21, 14, 16];
        let runs = runs(&lengths);
        assert_eq!(runs.last(), Some(&vec![1]), "{runs:?}");
        let mut seen: Vec<usize> = runs.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        let cost: f64 = runs
            .iter()
            .map(|run| run_cost(run.len(), run.iter().map(|&i| lengths[i]).max().unwrap()))
            .sum();
        assert!(cost < run_cost(lengths.len(), 256) / 4.0, "{cost}");
        // Rows of about one length share one run: a run's overhead outweighs a little padding.
        assert_eq!(super::runs(&[20, 21, 22, 20, 23, 19]).len(), 1);
        assert!(super::runs(&[]).is_empty());
    }

    #[test]
    fn pooling_ignores_padding_and_normalizes() {
        // Row 0: two real tokens of 1s and 3s -> mean 2 everywhere; row 1: one real token of
        // 5s, then a padding token of 100s that must not count.
        let mut hidden = Vec::new();
        for value in [1.0, 3.0, 5.0, 100.0] {
            hidden.extend(std::iter::repeat_n(value, DIMENSIONS));
        }
        let out = pool(&hidden, &[1, 1, 1, 0], 2, 2);
        let unit = 1.0 / (DIMENSIONS as f32).sqrt();
        assert!(
            out.iter().all(|v| (v - unit).abs() < 1e-6),
            "{:?}",
            &out[..4]
        );
    }
}
