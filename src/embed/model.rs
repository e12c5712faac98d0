//! The model itself: tokenizer, ONNX session, mean pooling, L2 normalisation.

use std::sync::OnceLock;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::{EmbedError, EmbedSettings, MODEL_FILE, RUNTIME_FILE, TOKENIZER_FILE, check_assets};

/// Output dimensions of all-MiniLM-L6-v2.
pub const DIMENSIONS: usize = 384;

/// Longest input in tokens; longer texts are truncated (the model's limit).
pub const MAX_TOKENS: usize = 256;

/// One embedding per text, plus the token count of each text.
pub struct Encoded {
    /// L2-normalised vectors, one per input text.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens per input text after truncation, special tokens included.
    pub tokens: Vec<usize>,
}

/// A loaded model; `embed` needs `&mut self` because an ONNX session run does.
pub struct Model {
    session: Session,
    tokenizer: Tokenizer,
}

// ONNX Runtime can be loaded into a process once; every model shares it.
static ENVIRONMENT: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

fn environment(settings: &EmbedSettings) -> Result<ort::environment::Environment, EmbedError> {
    ENVIRONMENT
        .get_or_init(|| {
            let lib = settings.asset(RUNTIME_FILE);
            ort::init_from(&lib)
                .map_err(|e| format!("cannot load {}: {e}", lib.display()))?
                .with_name("cordon")
                .build()
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(EmbedError::Runtime)
}

impl Model {
    /// Loads the tokenizer and the ONNX session from the model directory.
    pub fn load(settings: &EmbedSettings) -> Result<Self, EmbedError> {
        check_assets(settings)?;
        let env = environment(settings)?;
        let runtime = |e: ort::Error| EmbedError::Runtime(e.to_string());
        let session = Session::builder(&env)
            .map_err(runtime)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| EmbedError::Runtime(e.to_string()))?
            .with_intra_threads(settings.intra_threads.max(1))
            .map_err(|e| EmbedError::Runtime(e.to_string()))?
            .commit_from_file(settings.asset(MODEL_FILE))
            .map_err(runtime)?;

        let mut tokenizer = Tokenizer::from_file(settings.asset(TOKENIZER_FILE))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let pad_id = tokenizer.token_to_id("[PAD]").unwrap_or(0);
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id,
            pad_token: "[PAD]".into(),
            ..Default::default()
        }));
        let mut model = Self { session, tokenizer };
        // Fail at start-up, not on the first request, if the files do not
        // make a working model (wrong inputs, outputs or dimensions).
        model.embed(&["warm-up"])?;
        Ok(model)
    }

    /// Embeds `texts` in one model call.
    pub fn embed(&mut self, texts: &[&str]) -> Result<Encoded, EmbedError> {
        if texts.is_empty() {
            return Ok(Encoded {
                vectors: Vec::new(),
                tokens: Vec::new(),
            });
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let batch = encodings.len();
        let seq = encodings[0].get_ids().len();
        let mut ids = Vec::with_capacity(batch * seq);
        let mut mask = Vec::with_capacity(batch * seq);
        let mut tokens = Vec::with_capacity(batch);
        for e in &encodings {
            ids.extend(e.get_ids().iter().map(|&x| i64::from(x)));
            mask.extend(e.get_attention_mask().iter().map(|&x| i64::from(x)));
            tokens.push(e.get_attention_mask().iter().filter(|&&m| m == 1).count());
        }
        let shape = [batch, seq];
        let runtime = |e: ort::Error| EmbedError::Runtime(e.to_string());
        let outputs = self
            .session
            .run(ort::inputs! {
                "input_ids" => Tensor::from_array((shape, ids)).map_err(runtime)?,
                "attention_mask" => Tensor::from_array((shape, mask.clone())).map_err(runtime)?,
                "token_type_ids" => Tensor::from_array((shape, vec![0i64; batch * seq])).map_err(runtime)?,
            })
            .map_err(runtime)?;
        let output = outputs.get("last_hidden_state").ok_or_else(|| {
            EmbedError::Output("the model has no `last_hidden_state` output".into())
        })?;
        let (out_shape, hidden) = output.try_extract_tensor::<f32>().map_err(runtime)?;
        let dims: Vec<i64> = out_shape.iter().copied().collect();
        if dims != [batch as i64, seq as i64, DIMENSIONS as i64] {
            return Err(EmbedError::Output(format!(
                "last_hidden_state has shape {dims:?}, expected [{batch}, {seq}, {DIMENSIONS}]"
            )));
        }
        let vectors = (0..batch)
            .map(|b| {
                mean_pool_normalised(
                    &hidden[b * seq * DIMENSIONS..][..seq * DIMENSIONS],
                    &mask[b * seq..][..seq],
                )
            })
            .collect();
        Ok(Encoded { vectors, tokens })
    }
}

/// Mean over the tokens the attention mask keeps, then unit length.
fn mean_pool_normalised(hidden: &[f32], mask: &[i64]) -> Vec<f32> {
    let mut sum = vec![0f32; DIMENSIONS];
    let mut kept = 0f32;
    for (token, &m) in hidden.chunks_exact(DIMENSIONS).zip(mask) {
        if m == 1 {
            kept += 1.0;
            for (s, v) in sum.iter_mut().zip(token) {
                *s += v;
            }
        }
    }
    let kept = kept.max(1.0);
    sum.iter_mut().for_each(|s| *s /= kept);
    let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    sum.iter_mut().for_each(|s| *s /= norm);
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_ignores_masked_tokens_and_normalises() {
        let mut hidden = vec![0f32; 2 * DIMENSIONS];
        hidden[0] = 3.0;
        hidden[1] = 4.0;
        // The second token is padding and must not count.
        hidden[DIMENSIONS] = 100.0;
        let v = mean_pool_normalised(&hidden, &[1, 0]);
        assert!((v[0] - 0.6).abs() < 1e-6);
        assert!((v[1] - 0.8).abs() < 1e-6);
        assert_eq!(v[2], 0.0);
    }
}
