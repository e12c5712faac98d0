//! The model itself: tokenizer, ONNX session, mean pooling, L2 normalisation.
//!
//! Tokenising and running are apart: a [`TextTokenizer`] turns texts into
//! unpadded [`Sequence`]s on the requests' own threads, so that the worker
//! that owns the session only runs the model, and [`Model::run`] pads a
//! group of sequences to the longest of that group, not of the whole batch.

use std::sync::{Arc, OnceLock};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;
use tokenizers::{Tokenizer, TruncationParams};

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

/// One text as the model takes it: token ids after truncation, unpadded.
#[derive(Debug, Clone)]
pub struct Sequence {
    ids: Vec<i64>,
}

impl Sequence {
    /// Tokens, special tokens included.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether it has no token (a tokenizer always adds two).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The model's tokenizer, shared by every request that needs texts encoded.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Arc<Tokenizer>,
    pad_id: i64,
}

impl TextTokenizer {
    fn load(settings: &EmbedSettings) -> Result<Self, EmbedError> {
        let mut tokenizer = Tokenizer::from_file(settings.asset(TOKENIZER_FILE))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        // tokenizer.json pads every text to 128; sequences stay unpadded
        // here and are padded per model call (see `Model::run`).
        tokenizer.with_padding(None);
        let pad_id = i64::from(tokenizer.token_to_id("[PAD]").unwrap_or(0));
        Ok(Self {
            inner: Arc::new(tokenizer),
            pad_id,
        })
    }

    /// Encodes each text (truncated at [`MAX_TOKENS`]).
    pub fn encode(&self, texts: &[String]) -> Result<Vec<Sequence>, EmbedError> {
        texts
            .iter()
            .map(|text| {
                let encoding = self
                    .inner
                    .encode(text.as_str(), true)
                    .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
                Ok(Sequence {
                    ids: encoding.get_ids().iter().map(|&x| i64::from(x)).collect(),
                })
            })
            .collect()
    }
}

/// A loaded model; `run` needs `&mut self` because an ONNX session run does.
pub struct Model {
    session: Session,
    tokenizer: TextTokenizer,
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
            .with_intra_op_spinning(settings.intra_spinning)
            .map_err(|e| EmbedError::Runtime(e.to_string()))?
            .commit_from_file(settings.asset(MODEL_FILE))
            .map_err(runtime)?;

        let tokenizer = TextTokenizer::load(settings)?;
        let mut model = Self { session, tokenizer };
        // Fail at start-up, not on the first request, if the files do not
        // make a working model (wrong inputs, outputs or dimensions).
        model.embed(&["warm-up".to_owned()])?;
        Ok(model)
    }

    /// The tokenizer, for encoding texts before they reach the worker.
    pub fn tokenizer(&self) -> TextTokenizer {
        self.tokenizer.clone()
    }

    /// Encodes and embeds `texts` in one model call.
    pub fn embed(&mut self, texts: &[String]) -> Result<Encoded, EmbedError> {
        let sequences = self.tokenizer.encode(texts)?;
        let tokens = sequences.iter().map(Sequence::len).collect();
        let refs: Vec<&Sequence> = sequences.iter().collect();
        let vectors = self.run(&refs)?;
        Ok(Encoded { vectors, tokens })
    }

    /// Embeds `sequences` in one model call, padded to the longest of them.
    pub fn run(&mut self, sequences: &[&Sequence]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if sequences.is_empty() {
            return Ok(Vec::new());
        }
        let batch = sequences.len();
        let seq = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch * seq);
        let mut mask = Vec::with_capacity(batch * seq);
        for s in sequences {
            let pad = seq - s.len();
            ids.extend_from_slice(&s.ids);
            ids.extend(std::iter::repeat_n(self.tokenizer.pad_id, pad));
            mask.extend(std::iter::repeat_n(1i64, s.len()));
            mask.extend(std::iter::repeat_n(0i64, pad));
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
        Ok(vectors)
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
