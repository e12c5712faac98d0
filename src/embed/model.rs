//! The model itself: tokenizer, ONNX session, mean pooling, L2 normalisation.
//!
//! Tokenising and running are apart: a [`TextTokenizer`] turns texts into
//! unpadded [`Sequence`]s on the requests' own threads, so that the worker
//! that owns the session only runs the model.
//!
//! Two graphs of the same weights can be loaded, told apart by their inputs
//! ([`Layout`]). The packed one (`model-packed.onnx`, written by
//! models/pack.py) takes a group's tokens end to end and pads them only
//! inside attention, so the dense layers, most of the work, never run on
//! padding. The plain export (`model.onnx`) takes the group padded to its
//! longest text.

use std::sync::{Arc, OnceLock};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;
use tokenizers::{Tokenizer, TruncationParams};

use super::{EmbedError, EmbedSettings, RUNTIME_FILE, TOKENIZER_FILE, check_assets};

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

/// How a graph takes a group of texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Tokens end to end with their positions, `lengths`, and the two index
    /// maps between packed rows and padded slots; out: `token_states`.
    Packed,
    /// `input_ids`, `attention_mask` and `token_type_ids` padded to the
    /// longest text; out: `last_hidden_state`.
    Padded,
}

impl Layout {
    /// The layout a session's input names say it takes.
    fn of(session: &Session) -> Result<Self, EmbedError> {
        let has = |name: &str| session.inputs().iter().any(|i| i.name() == name);
        if [
            "input_ids",
            "position_ids",
            "lengths",
            "unpad_index",
            "pack_index",
        ]
        .iter()
        .all(|n| has(n))
        {
            Ok(Self::Packed)
        } else if ["input_ids", "attention_mask", "token_type_ids"]
            .iter()
            .all(|n| has(n))
        {
            Ok(Self::Padded)
        } else {
            Err(EmbedError::Output(
                "the model takes neither the packed nor the padded inputs".into(),
            ))
        }
    }
}

/// A loaded model; `run` needs `&mut self` because an ONNX session run does.
pub struct Model {
    session: Session,
    layout: Layout,
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
    /// Loads the tokenizer and an ONNX session from the model directory,
    /// with the settings' intra-op threads.
    pub fn load(settings: &EmbedSettings) -> Result<Self, EmbedError> {
        let threads = settings.intra_threads.max(1);
        check_assets(settings)?;
        let env = environment(settings)?;
        let runtime = |e: ort::Error| EmbedError::Runtime(e.to_string());
        // Basic level: constant folding (the int8 weights' dequantisation)
        // and little else. The packed graph is written fused, and the
        // extended level would fuse its Add and LayerNormalization into
        // SkipLayerNormalization, whose CPU kernel is several times slower
        // here (models/pack.py); for the plain export the level made no
        // difference that this machine's noise did not hide.
        let session = Session::builder(&env)
            .map_err(runtime)?
            .with_optimization_level(GraphOptimizationLevel::Level1)
            .map_err(|e| EmbedError::Runtime(e.to_string()))?
            .with_intra_threads(threads)
            .map_err(|e| EmbedError::Runtime(e.to_string()))?
            .with_intra_op_spinning(spins(settings.intra_spinning, threads))
            .map_err(|e| EmbedError::Runtime(e.to_string()))?
            .commit_from_file(settings.asset(&settings.model_file))
            .map_err(runtime)?;

        let layout = Layout::of(&session)?;
        let tokenizer = TextTokenizer::load(settings)?;
        let mut model = Self {
            session,
            layout,
            tokenizer,
        };
        // Fail at start-up, not on the first request, if the files do not
        // make a working model (wrong inputs, outputs or dimensions).
        model.embed(&["warm-up".to_owned()])?;
        Ok(model)
    }

    /// The tokenizer, for encoding texts before they reach the worker.
    pub fn tokenizer(&self) -> TextTokenizer {
        self.tokenizer.clone()
    }

    /// How the loaded graph takes its inputs.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Encodes and embeds `texts` in one model call.
    pub fn embed(&mut self, texts: &[String]) -> Result<Encoded, EmbedError> {
        let sequences = self.tokenizer.encode(texts)?;
        let tokens = sequences.iter().map(Sequence::len).collect();
        let refs: Vec<&Sequence> = sequences.iter().collect();
        let vectors = self.run(&refs)?;
        Ok(Encoded { vectors, tokens })
    }

    /// Embeds `sequences` in one model call.
    pub fn run(&mut self, sequences: &[&Sequence]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if sequences.is_empty() {
            return Ok(Vec::new());
        }
        match self.layout {
            Layout::Packed => self.run_packed(sequences),
            Layout::Padded => self.run_padded(sequences),
        }
    }

    fn run_packed(&mut self, sequences: &[&Sequence]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let batch = sequences.len();
        let seq = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
        let tokens: usize = sequences.iter().map(|s| s.len()).sum();
        let mut ids = Vec::with_capacity(tokens);
        let mut positions = Vec::with_capacity(tokens);
        let mut pack = Vec::with_capacity(tokens);
        // Padding slots point at row `tokens`, the zero row the graph appends.
        let mut unpad = vec![tokens as i64; batch * seq];
        let mut lengths = Vec::with_capacity(batch);
        let mut row = 0usize;
        for (b, s) in sequences.iter().enumerate() {
            ids.extend_from_slice(&s.ids);
            positions.extend(0..s.len() as i64);
            pack.extend((0..s.len()).map(|j| (b * seq + j) as i64));
            for (slot, r) in unpad[b * seq..][..s.len()].iter_mut().zip(row..) {
                *slot = r as i64;
            }
            lengths.push(
                i32::try_from(s.len())
                    .map_err(|_| EmbedError::Output(format!("a text of {} tokens", s.len())))?,
            );
            row += s.len();
        }
        let runtime = |e: ort::Error| EmbedError::Runtime(e.to_string());
        let outputs = self
            .session
            .run(ort::inputs! {
                "input_ids" => Tensor::from_array(([tokens], ids)).map_err(runtime)?,
                "position_ids" => Tensor::from_array(([tokens], positions)).map_err(runtime)?,
                "lengths" => Tensor::from_array(([batch], lengths)).map_err(runtime)?,
                "unpad_index" => Tensor::from_array(([batch, seq], unpad)).map_err(runtime)?,
                "pack_index" => Tensor::from_array(([tokens], pack)).map_err(runtime)?,
            })
            .map_err(runtime)?;
        let output = outputs
            .get("token_states")
            .ok_or_else(|| EmbedError::Output("the model has no `token_states` output".into()))?;
        let (out_shape, states) = output.try_extract_tensor::<f32>().map_err(runtime)?;
        let dims: Vec<i64> = out_shape.iter().copied().collect();
        if dims != [tokens as i64, DIMENSIONS as i64] {
            return Err(EmbedError::Output(format!(
                "token_states has shape {dims:?}, expected [{tokens}, {DIMENSIONS}]"
            )));
        }
        let mut rows = states.chunks_exact(DIMENSIONS);
        Ok(sequences
            .iter()
            .map(|s| normalised_mean(rows.by_ref().take(s.len())))
            .collect())
    }

    fn run_padded(&mut self, sequences: &[&Sequence]) -> Result<Vec<Vec<f32>>, EmbedError> {
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
                "attention_mask" => Tensor::from_array((shape, mask)).map_err(runtime)?,
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
        let vectors = sequences
            .iter()
            .enumerate()
            .map(|(b, s)| {
                let text = &hidden[b * seq * DIMENSIONS..][..s.len() * DIMENSIONS];
                normalised_mean(text.chunks_exact(DIMENSIONS))
            })
            .collect();
        Ok(vectors)
    }
}

/// Whether a session of `threads` spins while idle: as set, but never with
/// one thread, where it only burns the cores others need. Two workers of
/// one-thread sessions served a lone client at 62-84 texts per second with
/// spinning, using 192% of the cores, and at 84-95 without, using 98%.
fn spins(spinning: bool, threads: usize) -> bool {
    spinning && threads > 1
}

/// Mean of one text's token states (its padding left out by the caller),
/// then unit length.
fn normalised_mean<'a>(tokens: impl Iterator<Item = &'a [f32]>) -> Vec<f32> {
    let mut sum = vec![0f32; DIMENSIONS];
    let mut kept = 0f32;
    for token in tokens {
        kept += 1.0;
        for (s, v) in sum.iter_mut().zip(token) {
            *s += v;
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
    fn pooling_averages_the_tokens_and_normalises() {
        let mut hidden = vec![0f32; 2 * DIMENSIONS];
        hidden[0] = 6.0;
        hidden[DIMENSIONS + 1] = 8.0;
        // Mean (3, 4, 0, ...), then unit length.
        let v = normalised_mean(hidden.chunks_exact(DIMENSIONS));
        assert!((v[0] - 0.6).abs() < 1e-6);
        assert!((v[1] - 0.8).abs() < 1e-6);
        assert_eq!(v[2], 0.0);
    }
}
